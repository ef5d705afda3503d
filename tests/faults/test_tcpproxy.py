"""The partition proxy of the fault harness: bytes flow through it, a cut holds them (in both
directions, and for a connection made during the cut), and the heal delivers them, none lost."""
from __future__ import annotations

import asyncio

import pytest

from bench.tcpproxy import PartitionProxy
from tests.conftest import port

pytestmark = pytest.mark.faults


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_a_cut_holds_every_byte_until_the_heal():
    server = await asyncio.start_server(echo, "127.0.0.1", port(361))
    proxy = PartitionProxy(port(360), port(361))
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port(360))
        writer.write(b"before")
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"before"

        proxy.cut()
        writer.write(b"during")
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", port(360))  # accepted, not forwarded
        late_writer.write(b"new")
        for r in (reader, late_reader):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r.read(1), 0.5)

        proxy.heal()
        assert await asyncio.wait_for(reader.readexactly(6), 5) == b"during"
        assert await asyncio.wait_for(late_reader.readexactly(3), 5) == b"new"
        assert proxy.connections == 2
        for w in (writer, late_writer):
            w.close()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
