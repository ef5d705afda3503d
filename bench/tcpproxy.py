"""A small asyncio TCP proxy that can cut its traffic for a while: a network partition on loopback.

While partitioned it blackholes: it forwards no byte either way and connects no new client
upstream (the client sees silence, as behind a dropped link, not a reset). What was sent meanwhile
is held, not lost, and flows on when the partition heals, as TCP's retransmissions would deliver it
after a short partition.
"""
from __future__ import annotations

import asyncio
import contextlib


class PartitionProxy:
    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.listen_port, self.target_port, self.host = listen_port, target_port, host
        self.open = asyncio.Event()
        self.open.set()
        self.connections = 0  # accepted since start
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.listen_port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.open.wait()  # a connection made during the partition waits for it to heal
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the broker went away, or the client did: the other side sees the connection close
        except asyncio.CancelledError:
            pass  # close(): the proxy is going away (the server's callback would log a cancelled handler)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.open.wait()  # bytes read just before the cut are held until the heal
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()  # half-close: the far side sees the end, the other direction goes on
