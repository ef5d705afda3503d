"""Routing decides a poll in order and stores its decisions in one statement: an Update, a Forward
and a Cancel right behind their original in the same poll see its decision before it is stored."""
from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from uuid import UUID

import pytest
from sqlalchemy import event

from demo.scenario import PRECURSORS
from services.routing import repository
from services.routing.consumer import RoutingHandler
from services.routing.state import ActiveNetwork
from shared import db, topics
from shared.alerts import Alert
from shared.events import AlertForwarded, AlertSubmitted, Envelope
from shared.ids import derived_id, new_id
from shared.kafka import make_producer
from shared.service import Runtime
from tests.conftest import APP_ENV, port
from tests.integration.test_audit_log import drop_database, own_database

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
async def routing(settings) -> AsyncIterator[tuple[Runtime, RoutingHandler, list[str]]]:
    s = await own_database(settings, "routing_batch")
    await db.migrate(s, "routing")
    s = s.model_copy(update={"topic_prefix": f"{APP_ENV['BLONET_TOPIC_PREFIX']}rbatch."})
    await topics.create_topics(s)
    rt = Runtime("routing", port(133), s)
    rt.engine = db.make_engine(s, "routing", pool_size=2)
    rt.sessions = db.make_sessionmaker(rt.engine)
    rt.producer = make_producer(s)
    await rt.producer.start()
    active = ActiveNetwork(rt)
    await active.load()
    statements: list[str] = []
    event.listen(rt.engine.sync_engine, "before_cursor_execute",
                 lambda conn, cursor, sql, params, context, many: statements.append(sql))
    try:
        yield rt, RoutingHandler(rt, active), statements
    finally:
        await rt.producer.stop()
        await rt.engine.dispose()
        await drop_database(s)
        await topics.delete_topics(s, s.topic_prefix)


def thread() -> list[SimpleNamespace]:
    """An original, then an Update, a Forward and a Cancel of it, as routing reads them off alerts.submitted."""
    original = new_id()

    def submitted(alert_id: UUID, **changes) -> Envelope:
        alert = Alert.model_validate({**PRECURSORS, **changes})
        return Envelope.wrap(AlertSubmitted(alert=alert, submitted_by="k"), origin_node="t", alert_id=alert_id, thread_id=original)

    forward = AlertForwarded(forward_id=new_id(), agency="kg-sbs", unit="blo-dostuk", to=["kg-sbs-kyzyl-kiya"], forwarded_by="k")
    envs = [submitted(original),
            submitted(new_id(), msg_type="update", references=[str(original)], headline="обновление"),
            Envelope.wrap(forward, origin_node="t", alert_id=original, thread_id=original),
            submitted(new_id(), msg_type="cancel", references=[str(original)])]
    return [SimpleNamespace(value=e.to_bytes()) for e in envs]


async def decided(rt: Runtime, records: list[SimpleNamespace]) -> list[tuple[str, list[str]]]:
    """(kind, recipients' endpoints) of each record's stored decision, in the records' order."""
    async with rt.sessions() as session:
        out = []
        for record in records:
            env = Envelope.from_bytes(record.value)
            rows = [r for r in await repository.decisions_for(session, env.alert_id)
                    if r["event_id"] == derived_id(env.event_id, "routed")]
            (row,) = rows
            out.append((row["kind"], sorted(r["endpoint"] for r in row["decision"]["recipients"])))
        return out


async def test_later_events_of_a_poll_see_its_earlier_decisions(routing):
    rt, handler, statements = routing
    apart = thread()
    for record in apart:  # the reference: one poll each, every decision stored before the next
        await handler([record])
    together = thread()
    statements.clear()
    await handler(together)  # one poll
    ran = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert sum("INSERT INTO decisions" in s for s in ran) == 1 and sum("FROM routing.decisions" in s or "FROM decisions" in s
                                                                      for s in ran) == 1, ran

    expected, got = await decided(rt, apart), await decided(rt, together)
    assert [k for k, _ in got] == ["alert", "update", "forward", "cancel"]
    assert got == expected, "the same decisions as when each event had its own poll"
    assert all(endpoints for _, endpoints in got), "the Update, Forward and Cancel found the thread's original"
    assert got[2][1] == ["ep-kg-sbs-kyzyl-kiya"]

    # A replay of the whole poll stores nothing new and decides the same.
    await handler(together)
    assert await decided(rt, together) == got
