"""Finding an alert's row although the accept path writes none (docs/architecture.md, "Accept path").

The status projection stores an alert's row a few milliseconds after its 202, from alert.submitted.
Until then:
- the instance that accepted it answers from `recent`, a small map of its own accepts, dropped as
  the projection's NOTIFY names them (or after `hold` seconds, or past `max_entries`);
- any other instance, asked for an id it does not know, waits (at most `wait` seconds, woken by
  that NOTIFY) when the id may be in flight: a UUIDv7 minted within `hold` seconds (every id the
  gateway mints without a key), or an id an Idempotency-Key reserved (CAP ids carry the message's
  own `sent` time, so they are found this way). Any other unknown id is a 404 at once.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from uuid import UUID

from services.gateway import repository
from services.gateway.ops import FlowHub
from shared.service import Runtime

HOLD_SECONDS = 60.0
WAIT_SECONDS = 5.0  # longer than the projection's lag under load, short enough for a client's timeout
POLL_SECONDS = 0.25  # re-read while waiting when no NOTIFY can wake us (the LISTEN connection is down)


def minted_within(alert_id: UUID, seconds: float, now: float | None = None) -> bool:
    """Whether a UUIDv7's timestamp lies within the last `seconds` (or a little ahead, clocks drift)."""
    if alert_id.version != 7:
        return False
    at = (alert_id.int >> 80) / 1000
    now = time.time() if now is None else now
    return now - seconds <= at <= now + seconds


class AlertRows:
    def __init__(self, rt: Runtime, hub: FlowHub, *, hold: float = HOLD_SECONDS, wait: float = WAIT_SECONDS,
                 max_entries: int = 5_000) -> None:
        self.rt, self.hub, self.hold, self.wait, self.max_entries = rt, hub, hold, wait, max_entries
        self.recent: OrderedDict[UUID, tuple[float, dict]] = OrderedDict()
        self.progress = asyncio.Event()  # set whenever the projection stores one of `recent`
        hub.on_change.append(self.projected)

    def remember(self, row: dict) -> None:
        """Keep a row this instance accepted until the projection has it."""
        now = time.monotonic()
        self.recent[row["alert_id"]] = (now, row)
        while self.recent and (len(self.recent) > self.max_entries or now - next(iter(self.recent.values()))[0] > self.hold):
            self.recent.popitem(last=False)

    def projected(self, alert_id: UUID) -> None:
        if self.recent.pop(alert_id, None) is not None:
            self.progress.set()

    async def caught_up(self, agency: str | None) -> None:
        """Wait (at most `wait` seconds) until the projection has stored what this instance accepted
        from `agency` (None: from anyone), so a list read after a 202 shows it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            now = time.monotonic()
            pending = [a for a, (at, row) in self.recent.items()
                       if now - at <= self.hold and (agency is None or row["sender_agency"] == agency)]
            if not pending:
                return
            self.progress.clear()  # before asking: a NOTIFY from now on wakes the wait below
            # Ask once: the projection may have stored one before it was remembered (its NOTIFY then came too early).
            async with self.rt.sessions() as session:
                for alert_id in await repository.stored_ids(session, pending):
                    self.projected(alert_id)
            if not any(a in self.recent for a in pending) or (left := deadline - loop.time()) <= 0:
                return
            if not self.hub.listener.listening.is_set():  # no NOTIFY to wait for: ask again soon
                left = min(left, POLL_SECONDS)
            try:
                await asyncio.wait_for(self.progress.wait(), left)
            except asyncio.TimeoutError:
                pass

    def _recent(self, alert_id: UUID) -> dict | None:
        held = self.recent.get(alert_id)
        return held[1] if held and time.monotonic() - held[0] <= self.hold else None

    async def _stored(self, alert_id: UUID, *, ask_keys: bool = False) -> tuple[dict | None, bool]:
        """The projection's row, and (asked, and when there is none) whether an Idempotency-Key reserved the id."""
        async with self.rt.sessions() as session:
            row = await repository.get_alert(session, alert_id)
            reserved = ask_keys and row is None and await repository.key_reserved(session, alert_id)
        return row, reserved

    async def get(self, alert_id: UUID, *, wait: bool = True) -> dict | None:
        """The alert's row: stored, or recently accepted here, or (waiting) stored by the projection soon."""
        # Memory first: the projection's NOTIFY may drop the entry while the read below is in flight,
        # and then that read already sees the stored row; read the other way round, both can miss.
        mine = self._recent(alert_id)
        row, reserved = await self._stored(alert_id, ask_keys=wait and not minted_within(alert_id, self.hold))
        if row is not None:
            if mine and row["cap_original"] is None and mine["cap_original"] and row["sender_agency"] == mine["sender_agency"]:
                row = {**row, "cap": mine["cap"], "cap_original": mine["cap_original"]}  # the projection fills it in next
            return row
        if mine is not None or not wait or not (reserved or minted_within(alert_id, self.hold)):
            return mine
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        with self.hub.watch(alert_id) as changed:
            while (left := deadline - loop.time()) > 0:
                changed.clear()
                # Re-read first: the NOTIFY may have come between the read above and the watch.
                if (row := (await self._stored(alert_id))[0]) is not None:
                    return row
                pause = left if self.hub.listener.listening.is_set() else min(left, POLL_SECONDS)
                try:
                    await asyncio.wait_for(changed.wait(), pause)
                except asyncio.TimeoutError:
                    pass
        return (await self._stored(alert_id))[0]
