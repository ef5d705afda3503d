"""AlertRows without a database: the projection storing an alert while a lookup is in flight.

The race: a lookup reads the projection's table (no row yet), the projection commits and its NOTIFY
drops the alert from `recent`, then the lookup looked in `recent` — and found neither. A stream
following the alert then ended at once (CI run of a81650b: its slot was freed, so a key got a
sixth stream).
"""
from __future__ import annotations

import types

from services.gateway.lookup import AlertRows
from shared.ids import new_id


class Projection:
    """The stored rows, and a hook that stores one (and NOTIFYs) while a read is in flight."""

    def __init__(self) -> None:
        self.rows: dict = {}
        self.during_read = lambda: None


def lookup(projection: Projection) -> AlertRows:
    hub = types.SimpleNamespace(on_change=[])
    rows = AlertRows(rt=None, hub=hub)

    async def stored(alert_id, *, ask_keys=False):
        found = projection.rows.get(alert_id)  # the read's snapshot is taken first...
        projection.during_read()  # ...then the projection commits and notifies before it returns
        return found, False

    rows._stored = stored
    return rows


async def test_an_alert_projected_during_the_lookup_is_still_found():
    projection = Projection()
    rows = lookup(projection)
    alert_id = new_id()
    row = {"alert_id": alert_id, "sender_agency": "kg-sbs", "cap_original": None}
    rows.remember(row)

    def project() -> None:
        projection.rows[alert_id] = row
        for callback in rows.hub.on_change:
            callback(alert_id)

    projection.during_read = project
    assert await rows.get(alert_id, wait=False) == row
    projection.during_read = lambda: None
    assert alert_id not in rows.recent, "the NOTIFY dropped it from memory"
    assert await rows.get(alert_id, wait=False) == row, "and the table has it"


async def test_an_alert_neither_accepted_here_nor_stored_is_none_without_waiting():
    rows = lookup(Projection())
    assert await rows.get(new_id(), wait=False) is None
