"""One PostgreSQL LISTEN connection kept open for the life of the service, reconnecting after a loss.

Whoever relies on notifications (the live flow, the API-key cache) must know when it may miss
some: `listening` is set only while the connection is up, and `on_connect` runs each time it
(re)connects, so a cache can drop what it may have missed while it was down.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from shared import db
from shared.service import Runtime

log = logging.getLogger(__name__)
Callback = Callable[[str], None]  # a notification's payload


class Listener:
    def __init__(self, rt: Runtime, name: str, channels: dict[str, Callback], on_connect: Callable[[], None] = lambda: None,
                 retry_seconds: float = 2.0) -> None:
        self.rt, self.name, self.channels, self.on_connect = rt, name, channels, on_connect
        self.retry_seconds = retry_seconds
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until the service stops; after a loss, retry every `retry_seconds`."""
        dsn = db.service_url(self.rt.settings, "gateway").set(drivername="postgresql").render_as_string(hide_password=False)
        while not self.rt.stopping.is_set():
            try:
                await self._listen(dsn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("%s: not listening (%s); retrying in %g s", self.name, exc, self.retry_seconds)
            finally:
                self.listening.clear()
            if not self.rt.stopping.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.rt.stopping.wait(), self.retry_seconds)

    async def _listen(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            for channel, callback in self.channels.items():
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
            self.on_connect()
            self.listening.set()
            waits = {asyncio.ensure_future(self.rt.stopping.wait()), asyncio.ensure_future(lost.wait())}
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        finally:
            self.listening.clear()
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
