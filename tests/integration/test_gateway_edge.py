"""The gateway's edge on the real stack: CAP in and out, idempotency, bad input, limits, keys, ack/forward, list, SSE."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from uuid import uuid4

import aiohttp
import orjson
import pytest
from aiokafka import TopicPartition
from lxml import etree
from sqlalchemy import text

from demo.scenario import SCENARIO
from services.gateway import repository, service
from shared import topics
from shared.auth import Role, hash_api_key
from shared.cap import schema
from shared.events import AlertAcknowledged, AlertForwarded, Envelope, EventType
from shared.kafka import make_consumer
from tests.conftest import RUN, port
from tests.integration.conftest import in_session, make_key, start_service, wait_ready
from tests.integration.test_end_to_end import poll

pytestmark = pytest.mark.stack
STRICT = port(300)
PREFIX = f"t{RUN}.gw."
NEXT_YEAR = date.today().year + 1
FUTURE = {**SCENARIO, "effective": f"{NEXT_YEAR}-05-15T00:00:00+06:00", "expires": f"{NEXT_YEAR}-05-20T23:59:59+06:00"}


def cap_xml(identifier: str, *, encoding: str = "UTF-8", prefix: str = "cap", expires: str = "2027-05-20T23:59:59+06:00",
            headline: str = "Риск наркотрафика через Достук", extra: str = "", head: str = "") -> bytes:
    p = f"{prefix}:"
    body = (
        f'<?xml version="1.0" encoding="{encoding}"?>{head}<{p}alert xmlns:{prefix}="urn:oasis:names:tc:emergency:cap:1.2">'
        f"<{p}identifier>{identifier}</{p}identifier><{p}sender>kg-sbs@sbs.gov.kg</{p}sender>"
        f"<{p}sent>2026-11-01T09:30:00+06:00</{p}sent><{p}status>Exercise</{p}status><{p}msgType>Alert</{p}msgType>"
        f"<{p}scope>Restricted</{p}scope><{p}restriction>TLP:AMBER</{p}restriction><{p}info><{p}language>ru</{p}language>"
        f"<{p}category>Security</{p}category><{p}event>Наркотрафик</{p}event><{p}urgency>Future</{p}urgency>"
        f"<{p}severity>Severe</{p}severity><{p}certainty>Likely</{p}certainty>"
        f"<{p}eventCode><{p}valueName>blonet:category</{p}valueName><{p}value>drugs</{p}value></{p}eventCode>"
        f"<{p}expires>{expires}</{p}expires><{p}headline>{headline}</{p}headline>"
        f"<{p}parameter><{p}valueName>blonet:sender_post</{p}valueName><{p}value>bor-dobo</{p}value></{p}parameter>"
        f"<{p}area><{p}areaDesc>Достук</{p}areaDesc><{p}geocode><{p}valueName>blonet:post</{p}valueName>"
        f"<{p}value>dostuk</{p}value></{p}geocode></{p}area>{extra}</{p}info></{p}alert>"
    )
    return body.encode(encoding)


SIGNATURE = ('<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo><ds:CanonicalizationMethod '
             'Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></ds:SignedInfo><ds:SignatureValue>c2lnbmVk</ds:SignatureValue>'
             "</ds:Signature>")


def signed(xml: bytes) -> bytes:
    return xml.replace(b"</cap:alert>", SIGNATURE.encode() + b"</cap:alert>")


@pytest.fixture(scope="module")
async def strict(settings, tmp_path_factory) -> AsyncIterator[str]:
    """A gateway of its own (own topics, so nothing else produces there) with tight limits."""
    own = settings.model_copy(update={"topic_prefix": PREFIX})
    await topics.create_topics(own)
    proc = start_service("gateway", tmp_path_factory.mktemp("strict"), {
        "BLONET_GATEWAY_PORT": str(STRICT), "BLONET_TOPIC_PREFIX": PREFIX, "BLONET_MAX_BODY_BYTES": "65536", "BLONET_RATE_LIMIT_PER_SECOND": "5", "BLONET_RATE_LIMIT_BURST": "30",
        "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{STRICT}",
    }, suffix="-strict")
    try:
        await wait_ready(STRICT, proc)
        yield f"http://127.0.0.1:{STRICT}"
    finally:
        proc.stop()


async def topic_size(settings, name: str, prefix: str = PREFIX) -> int:
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        parts = [TopicPartition(prefix + name, p) for p in range(next(t.partitions for t in topics.CATALOGUE if t.name == name))]
        return sum((await consumer.end_offsets(parts)).values())
    finally:
        await consumer.stop()


def _envelope(value: bytes | None) -> Envelope | None:
    # The run's topics are shared: test_poison puts garbage on them on purpose, whichever runs first.
    try:
        return Envelope.from_bytes(value or b"")
    except ValueError:
        return None


async def events_on(settings, name: str, prefix: str) -> list[Envelope]:
    consumer = make_consumer(settings, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(prefix + name, p) for p in range(next(t.partitions for t in topics.CATALOGUE if t.name == name))]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        found = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [env for r in records if (env := _envelope(r.value)) is not None]
        return found
    finally:
        await consumer.stop()


async def state(settings) -> tuple[int, int, int]:
    """Return (records on the strict gateway's alerts.submitted, alert rows, idempotency rows)."""
    from sqlalchemy import func, select

    from services.gateway.models import idempotency_keys

    rows = await in_session(settings, "gateway", repository.count_alerts)
    keys = await in_session(settings, "gateway", lambda s: s.scalar(select(func.count()).select_from(idempotency_keys)))
    return await topic_size(settings, topics.ALERTS_SUBMITTED.name), rows, keys


def auth(key: str, **headers: str) -> dict:
    return {"Authorization": f"Bearer {key}", **headers}


JSON, CAPXML = {"Content-Type": "application/json"}, {"Content-Type": "application/cap+xml"}


async def test_cap_in_and_out(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    doc = signed(cap_xml("KG-SBS-CAP-1", encoding="windows-1251"))
    async with aiohttp.ClientSession(headers=auth(key)) as http:
        async with http.post(f"{strict}/v1/alerts", data=doc, headers=CAPXML) as r:
            assert r.status == 202, await r.text()
            first = await r.json()
        assert first["cap"] == {"sender": "kg-sbs@sbs.gov.kg", "identifier": "KG-SBS-CAP-1", "sent": "2026-11-01T09:30:00+06:00", "signed": True,
                                "signature": {"state": "unknown_signer", "reason": "no signing certificate is registered for the sender agency",
                                              "certificate": None, "signer": None}}
        async with http.post(f"{strict}/v1/alerts", data=doc, headers=CAPXML) as r:  # the same message again: one alert
            assert r.status == 202 and (await r.json())["id"] == first["id"]
        changed = signed(cap_xml("KG-SBS-CAP-1", encoding="windows-1251", headline="другой заголовок"))
        async with http.post(f"{strict}/v1/alerts", data=changed, headers=CAPXML) as r:
            assert r.status == 422 and (await r.json())["code"] == "idempotency_key_reused"
        async with http.get(f"{strict}/v1/alerts/{first['id']}", params={"format": "cap"}) as r:
            assert r.status == 200 and r.content_type == "application/cap+xml"
            rendered = await r.read()
        async with http.get(f"{strict}/v1/alerts/{first['id']}", params={"format": "cap", "original": "true"}) as r:
            assert await r.read() == doc, "the original comes back byte for byte, signature intact"
        async with http.get(f"{strict}/v1/alerts/{first['id']}") as r:
            status = await r.json()
    root = etree.fromstring(rendered)
    assert schema().validate(root), schema().error_log
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    assert root.findtext("c:identifier", namespaces=ns) == "KG-SBS-CAP-1"
    assert root.findtext("c:status", namespaces=ns) == "Exercise"
    assert root.findtext("c:info/c:headline", namespaces=ns) == "Риск наркотрафика через Достук"
    assert status["cap"]["signed"] is True and status["relation"] == "sender"


async def test_idempotency_key_replays_refuses_changes_and_in_flight(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    before = await topic_size(settings, topics.ALERTS_SUBMITTED.name)
    async with aiohttp.ClientSession(headers=auth(key, **{"Idempotency-Key": "exercise-42"})) as http:
        answers = []
        for _ in range(3):
            async with http.post(f"{strict}/v1/alerts", json=FUTURE) as r:
                answers.append((r.status, await r.json()))
        assert [s for s, _ in answers] == [202] * 3 and len({a["id"] for _, a in answers}) == 1
        async with http.post(f"{strict}/v1/alerts", json={**FUTURE, "headline": "changed"}) as r:
            assert r.status == 422 and (await r.json())["code"] == "idempotency_key_reused"
    assert await topic_size(settings, topics.ALERTS_SUBMITTED.name) == before + 1
    # A twin still in flight (reserved, not finished) gets 409.
    body = orjson.dumps(FUTURE)
    fingerprint = service.request_hash("POST", "/v1/alerts", body)
    await in_session(settings, "gateway", lambda s: repository.insert_key(
        s, agency="kg-sbs", key="in-flight-1", request_hash=fingerprint, alert_id=uuid4()))
    async with aiohttp.ClientSession(headers=auth(key, **{"Idempotency-Key": "in-flight-1"}, **JSON)) as http:
        async with http.post(f"{strict}/v1/alerts", data=body) as r:
            assert r.status == 409 and r.headers["Retry-After"] == "1" and (await r.json())["code"] == "in_flight"


async def test_bad_input_is_refused_and_changes_nothing(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    limited = await make_key(settings, "kg-sbs", Role.SUBMIT)
    await in_session(settings, "gateway", lambda s: s.execute(
        text("UPDATE api_keys SET posts = ARRAY['dostuk'] WHERE key_hash = :h"), {"h": hash_api_key(limited)}))
    area = "<cap:area><cap:areaDesc>x</cap:areaDesc></cap:area>"
    info = cap_xml("x").split(b"<cap:info>")[1].split(b"</cap:info>")[0].decode()
    cases = [
        (JSON, b'{"sender_agency": "kg-sbs", ', 422, "json_invalid"),
        (JSON, orjson.dumps({**FUTURE, "severity": "apocalyptic"}), 422, "invalid_alert"),
        (JSON, orjson.dumps({**FUTURE, "sender_agency": "kg-customs"}), 403, "wrong_sender"),
        (JSON, orjson.dumps({**FUTURE, "effective": None, "expires": "2017-05-20T23:59:59+06:00"}), 422, "expired"),
        (JSON, orjson.dumps({**FUTURE, "msg_type": "update", "references": ["0190a000-0000-7000-8000-000000000001"]}), 422, "unknown_reference"),
        (JSON, orjson.dumps({**FUTURE, "description": "x" * 70_000}), 413, "body_too_large"),
        ({"Content-Type": "text/plain"}, orjson.dumps(FUTURE), 415, "unsupported_media_type"),
        (CAPXML, b"<cap:alert", 422, "xml_malformed"),
        (CAPXML, cap_xml("dtd-1", head='<!DOCTYPE alert [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'), 422, "xml_dtd_forbidden"),
        (CAPXML, cap_xml("bomb-1", head='<!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'), 422, "xml_dtd_forbidden"),
        (CAPXML, cap_xml("schema-1").replace(b"<cap:severity>Severe", b"<cap:severity>Awful"), 422, "cap_schema_invalid"),
        (CAPXML, cap_xml("enum-1").replace(b"<cap:value>drugs", b"<cap:value>cookies"), 422, "cap_mapping"),
        (CAPXML, cap_xml("old-1", expires="2020-01-01T00:00:00+06:00"), 422, "expired"),
        (CAPXML, cap_xml("enc-1", encoding="windows-1251").replace(b'encoding="windows-1251"', b'encoding="UTF-8"'), 422, "xml_malformed"),
        (CAPXML, cap_xml("many-1", extra="").replace(b"</cap:alert>", f"<cap:info>{info}</cap:info>".encode() * 8 + b"</cap:alert>"), 422, "cap_too_large"),
        (CAPXML, cap_xml("areas-1", extra=area * 40), 422, "cap_too_large"),
    ]
    before = await state(settings)
    async with aiohttp.ClientSession() as http:
        for headers, body, code, reason in cases:
            async with http.post(f"{strict}/v1/alerts", data=body, headers=auth(key, **headers)) as r:
                got = await r.json()
                assert (r.status, got.get("code")) == (code, reason), (body[:120], r.status, got)
        async with http.post(f"{strict}/v1/alerts", json={**FUTURE, "sender_post": "bor-dobo"}, headers=auth(limited)) as r:
            assert r.status == 403 and (await r.json())["code"] == "wrong_post"
        async with http.post(f"{strict}/v1/alerts", json=FUTURE, headers={"Authorization": "Bearer blo_x_y"}) as r:
            assert r.status == 401 and (await r.json())["code"] == "unauthorized"
    await asyncio.sleep(0.3)
    assert await state(settings) == before


async def test_rate_limit_answers_429_with_retry_after(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers=auth(key)) as http:
        statuses, retry = [], None
        for _ in range(45):
            async with http.get(f"{strict}/v1/alerts", params={"limit": 1}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After", retry)
    assert statuses[:25] == [200] * 25 and 429 in statuses and int(retry) >= 1


async def refused_after(http: aiohttp.ClientSession, url: str, key: str, within: float = 1.0) -> float:
    """Poll with `key` until the gateway answers 401; return how long that took (fails past `within`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        async with http.get(f"{url}/v1/alerts", params={"limit": 1}, headers=auth(key)) as r:
            if r.status == 401:
                return loop.time() - started
        assert loop.time() - started < within, f"the revoked key still worked after {within} s"
        await asyncio.sleep(0.05)


async def test_revocation_and_rotation_take_effect_within_a_second(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT, Role.RECEIVE)
    key_id = key.split("_")[1]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the second answer comes from the gateway's key cache
            async with http.get(f"{strict}/v1/alerts", headers=auth(key)) as r:
                assert r.status == 200
        new_id, new_key = await in_session(settings, "gateway", lambda s: service.rotate_key(s, key_id))
        await refused_after(http, strict, key)
        async with http.get(f"{strict}/v1/alerts", headers=auth(new_key)) as r:
            assert r.status == 200
        rows = {r["key_id"]: r for r in await in_session(settings, "gateway", repository.list_keys)}
        assert rows[key_id]["replaced_by"] == new_id and rows[new_id]["roles"] == ["submit", "receive"]
        assert await in_session(settings, "gateway", lambda s: repository.revoke_key(s, new_id))
        await refused_after(http, strict, new_key)


async def test_key_cache_is_bypassed_while_its_listen_connection_is_down(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.RECEIVE)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{strict}/v1/alerts", headers=auth(key)) as r:
            assert r.status == 200  # now cached
        cut = await in_session(settings, "gateway", lambda s: s.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE '%gateway_keys%' AND pid <> pg_backend_pid()")))
        assert cut.rowcount >= 1, "no gateway was listening for key changes"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.5)  # the gateways see their connection gone; they reconnect after 2 s
        # Revoked while nobody listens: no notification reaches the strict gateway's cache.
        assert await in_session(settings, "gateway", lambda s: repository.revoke_key(s, key.split("_")[1]))
        async with http.get(f"{strict}/v1/alerts", headers=auth(key)) as r:
            assert r.status == 401, "a cached key was served while revocations could not be heard"
        assert loop.time() - started < 1.9, "checked after the reconnect: the test proves nothing"


async def test_recipient_sees_its_view_acknowledges_and_forwards(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    sender, moi = await make_key(settings, "kg-sbs", Role.SUBMIT), await make_key(settings, "kg-moi", Role.RECEIVE)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw}/v1/alerts", json=FUTURE, headers=auth(sender)) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]

        async def mine():
            async with http.get(f"{gw}/v1/alerts/{alert_id}", headers=auth(moi)) as r:
                return await r.json() if r.status == 200 else None

        view = await poll(mine, lambda v: v and v["received"] and all(x["view"] for x in v["received"]))
        assert view["relation"] == "recipient" and view["recipients"] is None and view["denied"] is None
        assert view["received"][0]["view"]["alert_id"] == alert_id
        async with http.get(f"{gw}/v1/alerts/{alert_id}", params={"format": "cap"}, headers=auth(moi)) as r:
            assert r.status == 200 and schema().validate(etree.fromstring(await r.read()))
        async with http.post(f"{gw}/v1/alerts/{alert_id}/ack", json={"status": "acting", "comment": "на контроле"},
                             headers=auth(moi, **{"Idempotency-Key": "ack-1"})) as r:
            assert r.status == 202, await r.text()
            ack = await r.json()
        async with http.post(f"{gw}/v1/alerts/{alert_id}/ack", json={"status": "acting", "comment": "на контроле"},
                             headers=auth(moi, **{"Idempotency-Key": "ack-1"})) as r:
            assert (await r.json())["event_id"] == ack["event_id"], "a retried ack is the same event"
        async with http.post(f"{gw}/v1/alerts/{alert_id}/forward", json={"to": ["kg-customs-dostuk"], "comment": "для исполнения"},
                             headers=auth(moi)) as r:
            assert r.status == 202, await r.text()
            fwd = await r.json()
        async with http.post(f"{gw}/v1/alerts/{alert_id}/ack", json={"status": "acting"}, headers=auth(sender)) as r:
            assert r.status == 403
        async with http.get(f"{gw}/v1/alerts/{alert_id}", headers=auth(sender)) as r:
            status = await r.json()
    moi_rows = [x for x in status["recipients"] if x["agency"] == "kg-moi"]
    assert moi_rows and all(x["state"] == "acknowledged" and x["acknowledgement"]["comment"] == "на контроле" for x in moi_rows)
    assert [f["forward_id"] for f in status["forwards"]] == [fwd["forward_id"]]
    acks = [e for e in await events_on(settings, topics.ALERTS_ACKNOWLEDGED.name, settings.topic_prefix) if str(e.alert_id) == alert_id]
    assert len(acks) == 1 and acks[0].payload_as(AlertAcknowledged).status == "acting" and str(acks[0].event_id) == ack["event_id"]
    forwarded = [e for e in await events_on(settings, topics.ALERTS_SUBMITTED.name, settings.topic_prefix)
                 if e.type is EventType.ALERT_FORWARDED and str(e.alert_id) == alert_id]
    assert [str(e.payload_as(AlertForwarded).forward_id) for e in forwarded] == [fwd["forward_id"]]
    assert str(forwarded[0].thread_id) == status["thread_id"]


async def test_list_pages_with_a_cursor_and_filters(settings, strict):
    key = await make_key(settings, "uz-sbs", Role.SUBMIT)  # the one agency no other test sends as (observers may not)
    ids = []
    async with aiohttp.ClientSession(headers=auth(key)) as http:
        for n in range(3):
            async with http.post(f"{strict}/v1/alerts", json={**FUTURE, "sender_agency": "uz-sbs", "sender_post": None,
                                                              "category": "precursors" if n else "weapons"}) as r:
                ids.append((await r.json())["id"])
        async with http.get(f"{strict}/v1/alerts", params={"limit": 2, "box": "sent"}) as r:
            page = await r.json()
        async with http.get(f"{strict}/v1/alerts", params={"limit": 2, "box": "sent", "cursor": page["next_cursor"]}) as r:
            rest = await r.json()
        async with http.get(f"{strict}/v1/alerts", params={"category": "weapons"}) as r:
            weapons = await r.json()
        async with http.get(f"{strict}/v1/alerts", params={"cursor": "@@"}) as r:
            assert r.status == 422
    assert [i["id"] for i in page["items"] + rest["items"]] == ids[::-1] and rest["next_cursor"] is None
    assert [i["id"] for i in weapons["items"]] == ids[:1]


async def test_events_stream_the_status(settings, strict):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers=auth(key)) as http:
        async with http.post(f"{strict}/v1/alerts", json=FUTURE) as r:
            alert_id = (await r.json())["id"]
        async with http.get(f"{strict}/v1/alerts/{alert_id}/events", params={"until_seconds": 1}) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            text = (await r.read()).decode()
    events = [block for block in text.split("\n\n") if "event: status" in block]
    assert events and orjson.loads(events[0].split("data: ", 1)[1])["id"] == alert_id


async def test_finished_idempotency_keys_are_purged_after_the_retention(settings):
    from datetime import datetime, timedelta, timezone

    from services.gateway.models import idempotency_keys

    old = datetime.now(timezone.utc) - timedelta(hours=49)
    for key, state_ in (("purge-old-done", "done"), ("purge-old-in-flight", "in_flight")):
        await in_session(settings, "gateway", lambda s, k=key, st=state_: s.execute(idempotency_keys.insert().values(
            agency="purge-test", key=k, request_hash="x", alert_id=uuid4(), state=st, created_at=old, updated_at=old)))
    await in_session(settings, "gateway", lambda s: repository.purge_keys(s, datetime.now(timezone.utc) - timedelta(hours=48)))
    left = await in_session(settings, "gateway", lambda s: s.scalars(
        idempotency_keys.select().with_only_columns(idempotency_keys.c.key).where(idempotency_keys.c.agency == "purge-test")))
    assert list(left) == ["purge-old-in-flight"], "only finished keys are forgotten"
