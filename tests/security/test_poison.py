"""Hostile records and hostile input: a record no service can use goes to that service's dead-letter
topic and never blocks anything; control characters are refused at the edge and change nothing."""
from __future__ import annotations

import asyncio
from uuid import UUID

import aiohttp
import orjson
import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import func, select

from demo.scenario import SCENARIO
from services.audit.models import entries
from services.gateway.models import alerts as gateway_alerts
from shared import topics
from shared.auth import Role
from shared.events import (
    AckStatus, AlertAcknowledged, AlertRouted, AlertSubmitted, DeliveryRequested, DeliveryState, DeliveryStatus,
    Envelope, OperatorAction, Payload, Recipient, ViewProfile,
)
from shared.ids import new_id
from shared.kafka import deadletter_of, make_admin, make_producer
from shared.settings import Settings
from tests.integration.conftest import in_session, make_key, read_topic
from tests.unit.test_cap import ALERT, cap

pytestmark = pytest.mark.stack
NUL = "kg\x00sbs"
# The consumer groups (besides audit, which logs every record) reading each topic, and the
# service whose dead-letter topic they use.
GROUPS = {
    topics.ALERTS_SUBMITTED: {"routing": "routing", "gateway-status": "gateway"},
    topics.ALERTS_ROUTED: {"gateway-status": "gateway"},
    topics.DELIVERIES_REQUESTED: {"notifier": "notifier", "gateway-status": "gateway"},
    topics.DELIVERIES_STATUS: {"gateway-status": "gateway"},
    topics.ALERTS_ACKNOWLEDGED: {"notifier-acks": "notifier", "gateway-status": "gateway"},
    topics.OPERATIONS_ACTIONS: {"gateway-status": "gateway"},
}


def nul_event(topic: topics.Topic) -> bytes:
    """A well-formed event of the topic's type with a NUL in a string its consumers store or check."""
    aid = new_id()
    payload: Payload | None = {
        topics.ALERTS_ROUTED: lambda: AlertRouted(ruleset_hash="h", denied=[], recipients=[Recipient(
            agency=NUL, endpoint="ep-blo-dostuk", profile=ViewProfile.FULL, rule="r", reason="r")]),
        topics.DELIVERIES_REQUESTED: lambda: DeliveryRequested(delivery_id=new_id(), endpoint="ep\x00x", agency=NUL,
                                                               url="https://x.example/", profile=ViewProfile.FULL, body={}),
        topics.DELIVERIES_STATUS: lambda: DeliveryStatus(delivery_id=new_id(), endpoint="ep\x00x", agency=NUL,
                                                         state=DeliveryState.DELIVERED, attempt=1),
        topics.ALERTS_ACKNOWLEDGED: lambda: AlertAcknowledged(agency=NUL, status=AckStatus.RECEIVED, acknowledged_by="k"),
        topics.OPERATIONS_ACTIONS: lambda: OperatorAction(action="alert.escalate", target=NUL, actor="notifier"),
    }.get(topic, lambda: None)()
    if payload is None:  # alert.submitted: the model refuses NUL now, so the NUL goes into the bytes
        env = Envelope.wrap(AlertSubmitted(alert=SCENARIO, submitted_by="k"), origin_node="test", alert_id=aid, thread_id=aid)
        doc = orjson.loads(env.to_bytes())
        doc["payload"]["alert"]["headline"] = "Контроль\x00усилен"
        return orjson.dumps(doc)
    return Envelope.wrap(payload, origin_node="test", alert_id=aid, thread_id=aid).to_bytes()


async def max_message_bytes(settings: Settings, name: str) -> int:
    admin = make_admin(settings)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": None})])
        (resource,) = response.resources
        return int(next(c[1] for c in resource[4] if c[0] == "max.message.bytes"))
    finally:
        await admin.close()


async def bad_records(settings: Settings, topic: topics.Topic) -> dict[str, bytes]:
    """Each kind of bad content, for one topic."""
    name = settings.topic(topic.name)
    huge = await max_message_bytes(settings, name) - 1024  # a record batch adds ~100 bytes of its own
    good = nul_event(topic).replace(b"\\u0000", b"-")
    return {
        "nul": nul_event(topic),
        "invalid-utf8": good.replace(b'"origin_node":"test"', b'"origin_node":"te\xff\xfest"'),
        "wrong-schema": b'{"type": "alert.submitted", "payload": {}}',
        "huge": b'{"padding": "' + b"x" * (huge - 16) + b'"}',
    }


async def deadlettered(settings: Settings) -> set[tuple[str, str, int, int]]:
    """Every (group, topic, partition, offset) on the services' dead-letter topics."""
    found = set()
    for t in topics.SERVICE_DEADLETTERS:
        for record in await read_topic(settings, settings.topic(t.name), t.partitions):
            facts = deadletter_of(record)
            found.add((facts["group"], facts["topic"], int(facts["partition"]), int(facts["offset"])))
    return found


async def audited(settings: Settings, wanted: set[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
    """Which of the (topic, partition, offset) records the audit log holds: as itself, or as a dead letter."""
    async def read(session):
        return (await session.execute(select(entries.c.entry))).scalars().all()

    seen = set()
    for raw in await in_session(settings, "audit", read):
        doc = orjson.loads(raw)
        for where in (doc.get("source"), doc.get("deadletter")):
            if where and where.get("topic") and where.get("partition") is not None:
                seen.add((where["topic"], where["partition"], where["offset"]))
    return wanted & seen


async def submit(http: aiohttp.ClientSession, settings: Settings, body, **kwargs) -> aiohttp.ClientResponse:
    return await http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=body, **kwargs)


async def delivered(inbox, alert_ids: set[str], timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        got = {m.body["alert_id"] for m in inbox.received.get("ep-blo-dostuk", [])}
        if alert_ids <= got:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"alerts behind poison records were never delivered: {alert_ids - got}")


async def test_garbage_on_every_partition_does_not_stop_routing(settings, services, inbox):
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic(topics.ALERTS_SUBMITTED.name)
        for partition in range(topics.ALERTS_SUBMITTED.partitions):
            await producer.send_and_wait(topic, b"\\xff not json", partition=partition)
            await producer.send_and_wait(topic, b'{"type": "alert.submitted", "payload": {}}', partition=partition)
    finally:
        await producer.stop()
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with await submit(http, settings, SCENARIO) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]
    await delivered(inbox, {alert_id})
    log = services["routing"].log.read_text()
    assert "record dead-lettered" in log and "not json" not in log, "the record is named, its bytes never logged"


async def test_every_kind_of_bad_record_on_every_topic_is_dead_lettered_and_alerts_still_flow(settings, services, inbox):
    injected: dict[tuple[str, int, int], tuple[topics.Topic, str]] = {}
    producer = make_producer(settings)
    await producer.start()
    try:
        for topic in GROUPS:
            for kind, value in (await bad_records(settings, topic)).items():
                meta = await producer.send_and_wait(settings.topic(topic.name), value, key=b"poison", partition=0)
                injected[(meta.topic, meta.partition, meta.offset)] = (topic, kind)
    finally:
        await producer.stop()

    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        ids = set()
        for n in range(3):
            async with await submit(http, settings, {**SCENARIO, "headline": f"Round {n}: {SCENARIO['headline']}"}) as r:
                assert r.status == 202, await r.text()
                ids.add((await r.json())["id"])
    await delivered(inbox, ids)

    wanted = {(settings.topic(group), source[0], source[1], source[2])
              for source, (topic, _) in injected.items() for group in GROUPS[topic]}
    for _ in range(120):
        missing = wanted - await deadlettered(settings)
        if not missing:
            break
        await asyncio.sleep(0.5)
    assert not missing, f"not dead-lettered: {sorted(missing)}"
    for _ in range(120):
        unaudited = set(injected) - await audited(settings, set(injected))
        if not unaudited:
            break
        await asyncio.sleep(0.5)
    assert not unaudited, f"the audit log lacks {[injected[u] for u in unaudited]}"
    for proc in services.values():
        log = proc.log.read_text(errors="replace")
        assert "Контроль" not in log and "xxxxxxxxxx" not in log and "kg\\u0000sbs" not in log, f"alert bytes in {proc.name}'s log"


async def test_control_characters_are_refused_at_the_edge_naming_the_field_and_change_nothing(settings, services):
    submitter = await make_key(settings, "kg-sbs", Role.SUBMIT)
    recipient = await make_key(settings, "kg-customs", Role.RECEIVE)
    base = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"

    async def stored() -> int:
        return await in_session(settings, "gateway", lambda s: s.scalar(select(func.count()).select_from(gateway_alerts)))

    async def offsets() -> dict:
        found = {}
        for t in (topics.ALERTS_SUBMITTED, topics.ALERTS_ACKNOWLEDGED):
            records = await read_topic(settings, settings.topic(t.name), t.partitions)
            found[t.name] = len(records)
        return found

    async def settled() -> int:  # earlier tests' alerts may still be on their way into the projection
        seen = await stored()
        for _ in range(20):
            await asyncio.sleep(0.3)
            if (now := await stored()) == seen:
                return now
            seen = now
        return seen

    before = (await settled(), await offsets())
    bad_cap = cap(ALERT.replace("<headline>Риск", "<headline>Риск\u009b"))  # XML 1.0 lets C1 controls through
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {submitter}"}) as http:
        for field, body in (("headline", {**SCENARIO, "headline": "Контроль\x00усилен"}),
                            ("description", {**SCENARIO, "description": "a\x07b"}),
                            ("sender_post", {**SCENARIO, "sender_post": "blo\ndostuk"}),
                            ("names", {**SCENARIO, "personal_data": {"names": ["Ivanov\x00"]}})):
            async with await submit(http, settings, body, headers={"Idempotency-Key": f"nul-{field}"}) as r:
                problem = await r.json()
                assert r.status == 422, problem
                assert any(field in map(str, e["loc"]) for e in problem["errors"]), problem
                assert "Ivanov" not in str(problem) and "Контроль" not in str(problem)
        async with http.post(base, data=bad_cap, headers={"Content-Type": "application/cap+xml"}) as r:
            problem = await r.json()
            assert r.status == 422 and "headline" in problem["detail"] and "U+009B" in problem["detail"], problem
        async with await submit(http, settings, SCENARIO) as r:
            assert r.status == 202
            alert_id = UUID((await r.json())["id"])
    for _ in range(50):  # the status projection stores the clean alert a poll after its 202
        if await stored() > before[0]:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # and would store any other within that time too
    mid = (await stored(), await offsets())
    assert mid[0] == before[0] + 1, "only the clean alert was stored"

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {recipient}"}) as http:
        for path, field, body in ((f"{base}/{alert_id}/forward", "to", {"to": ["kg-moi\x00dostuk"]}),
                                  (f"{base}/{alert_id}/forward", "comment", {"to": ["kg-moi-dostuk"], "comment": "x\x1by"}),
                                  (f"{base}/{alert_id}/ack", "comment", {"status": "received", "comment": "ok\x00"})):
            async with http.post(path, json=body) as r:
                problem = await r.json()
                assert r.status == 422, problem
                assert any(field in map(str, e["loc"]) for e in problem["errors"]), problem
    assert (await stored(), await offsets()) == mid, "the refusals wrote nothing, to the database or to Kafka"
