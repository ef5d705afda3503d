"""The status projection: a poll is a few array statements whose text does not change with its size,
one NOTIFY, and the same rows as record-by-record handling would leave."""
from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select

from services.gateway.consumer import StatusView
from services.gateway.models import alerts, recipients
from shared import db
from shared.alerts import Alert
from shared.events import (
    AlertRouted, AlertSubmitted, CapOrigin, DeliveryRequested, DeliveryState, DeliveryStatus, Envelope, Recipient, ViewProfile,
)
from shared.ids import new_id
from shared.service import Runtime
from tests.conftest import port
from tests.integration.test_audit_log import drop_database, own_database
from tests.integration.test_gateway_edge import FUTURE

pytestmark = pytest.mark.stack
ENDPOINTS = ("ep-blo-dostuk", "ep-uz-sbs-dustlik")


@pytest.fixture(scope="module")
async def view(settings) -> AsyncIterator[tuple[Runtime, StatusView, list[str]]]:
    s = await own_database(settings, "projection")
    await db.migrate(s, "gateway")
    rt = Runtime("gateway", port(132), s)
    rt.engine = db.make_engine(s, "gateway", pool_size=1)
    rt.sessions = db.make_sessionmaker(rt.engine)
    statements: list[str] = []
    event.listen(rt.engine.sync_engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    try:
        yield rt, StatusView(rt), statements
    finally:
        await rt.engine.dispose()
        await drop_database(s)


def wrap(payload, alert_id) -> SimpleNamespace:
    return SimpleNamespace(value=Envelope.wrap(payload, origin_node="test", alert_id=alert_id, thread_id=alert_id).to_bytes())


def status(endpoint: str, attempt: int, state: DeliveryState) -> DeliveryStatus:
    return DeliveryStatus(delivery_id=new_id(), endpoint=endpoint, agency="kg-sbs", state=state, attempt=attempt,
                          http_status=200 if state is DeliveryState.DELIVERED else 503)


def life_of_an_alert(cap: bool = False) -> tuple[object, list[SimpleNamespace]]:
    """Every event kind the hot path projects, for one alert; attempt 2's status arrives before a replayed attempt 1."""
    aid = new_id()
    alert = Alert.model_validate(FUTURE)
    sub = AlertSubmitted(alert=alert, submitted_by="k", **({
        "cap": CapOrigin(sender="s@x", identifier=str(aid), sent="2026-11-01T09:30:00+06:00"), "cap_original": b"<alert/>"}
        if cap else {}))
    routed = AlertRouted(ruleset_hash="h", kind="alert", denied=[], recipients=[
        Recipient(agency="kg-sbs", unit=None, endpoint=e, profile=ViewProfile.FULL, rule="r", reason="why") for e in ENDPOINTS])
    views = [DeliveryRequested(delivery_id=new_id(), endpoint=e, agency="kg-sbs", url="https://x.example/",
                               profile=ViewProfile.FULL, body={"seen_by": e}) for e in ENDPOINTS]
    statuses = [status(ENDPOINTS[0], 1, DeliveryState.RETRYING), status(ENDPOINTS[0], 2, DeliveryState.DELIVERED),
                status(ENDPOINTS[0], 1, DeliveryState.RETRYING), status(ENDPOINTS[1], 1, DeliveryState.DELIVERED)]
    return aid, [wrap(p, aid) for p in (sub, routed, *views, *statuses)]


async def stored(rt: Runtime, aid) -> tuple[dict, dict[str, dict]]:
    async with rt.sessions() as session:
        row = (await session.execute(select(alerts).where(alerts.c.alert_id == aid))).mappings().one()
        rows = (await session.execute(select(recipients).where(recipients.c.alert_id == aid))).mappings().all()
    return dict(row), {r["endpoint"]: dict(r) for r in rows}


async def test_one_poll_is_a_few_statements_whose_text_does_not_change_with_its_size(view):
    rt, handler, statements = view
    one_id, one = life_of_an_alert(cap=True)
    statements.clear()
    await handler(one)
    small = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    many = [life_of_an_alert(cap=n % 2 == 0) for n in range(40)]
    statements.clear()
    await handler([r for _, records in many for r in records])
    large = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert large == small, "40 alerts (400 records) run the very statements one alert does"
    assert len(large) == 6, large  # alerts, routing, routed recipients, views, statuses, one NOTIFY
    assert sum("pg_notify" in s for s in large) == 1

    for aid, _ in [(one_id, None), *many]:
        row, by_endpoint = await stored(rt, aid)
        assert row["routing"] == {"ruleset_hash": "h", "denied": []}
        first = by_endpoint[ENDPOINTS[0]]
        # The later attempt stays: the replayed attempt 1 behind it does not roll the view back.
        assert (first["state"], first["attempts"], first["rule"], first["view"]) == ("delivered", 2, "r", {"seen_by": ENDPOINTS[0]})
        assert first["delivered_at"] is not None and by_endpoint[ENDPOINTS[1]]["state"] == "delivered"
    row, _ = await stored(rt, one_id)
    assert row["cap_original"] == b"<alert/>" and row["cap"]["identifier"] == str(one_id)


async def test_an_older_attempt_in_a_later_poll_does_not_overwrite(view):
    rt, handler, _ = view
    aid, records = life_of_an_alert()
    await handler(records)
    await handler([wrap(status(ENDPOINTS[0], 1, DeliveryState.FAILED), aid)])
    _, by_endpoint = await stored(rt, aid)
    assert (by_endpoint[ENDPOINTS[0]]["state"], by_endpoint[ENDPOINTS[0]]["attempts"]) == ("delivered", 2)
    await handler([wrap(status(ENDPOINTS[0], 3, DeliveryState.FAILED), aid)])
    _, by_endpoint = await stored(rt, aid)
    assert (by_endpoint[ENDPOINTS[0]]["state"], by_endpoint[ENDPOINTS[0]]["attempts"]) == ("failed", 3)
    assert by_endpoint[ENDPOINTS[0]]["delivered_at"] is not None, "the first delivery's time is kept"
