"""The foundation's end-to-end test: the exercise scenario through four real service processes."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, SCENARIO
from shared.auth import Role
from tests.integration.conftest import make_key

pytestmark = pytest.mark.stack


async def poll(fetch, done, timeout=30.0):
    value = None
    for _ in range(int(timeout / 0.1)):
        value = await fetch()
        if done(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting; last value: {value}")


async def test_scenario_is_routed_delivered_and_audited(settings, services, inbox):
    submit_key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    auditor_key = await make_key(settings, "unodc", Role.AUDITOR)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {submit_key}"}) as http:
        async with http.post(f"{base}/v1/alerts", json=SCENARIO) as r:
            assert r.status == 202, await r.text()
            accepted = await r.json()
        alert_id = accepted["id"]
        assert accepted["status_url"] == f"{base}/v1/alerts/{alert_id}"

        async def status():
            async with http.get(accepted["status_url"]) as r:
                assert r.status == 200
                return await r.json()

        view = await poll(status, lambda s: s["status"] == "routed" and len(s["recipients"]) == len(EXPECTED_RECIPIENTS)
                          and all(x["state"] == "delivered" for x in s["recipients"]))

    got = {x["endpoint"]: (x["agency"], x["unit"], x["profile"]) for x in view["recipients"]}
    assert got == EXPECTED_RECIPIENTS
    assert {(d["agency"], d["unit"]): d["code"] for d in view["denied"]} == EXPECTED_DENIED
    assert all(x["http_status"] == 200 and x["attempts"] == 1 for x in view["recipients"])

    # Every webhook was verified by the inbox with the standardwebhooks library, once each.
    assert inbox.rejected == 0
    mine = {ep: [m for m in box if m.body["alert_id"] == alert_id] for ep, box in inbox.received.items()}
    assert {ep for ep, msgs in mine.items() if msgs} == set(EXPECTED_RECIPIENTS)
    assert all(len(msgs) <= 1 for msgs in mine.values())
    unodc = mine["ep-unodc"][0].body
    assert unodc["recipient"]["profile"] == "summary" and "description" not in unodc["alert"]
    assert mine["ep-blo-dostuk"][0].body["alert"]["description"] == SCENARIO["description"]

    # The audit trail holds every step, causes before effects.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/auth/token", headers={"Authorization": f"Bearer {auditor_key}"}) as r:
            token = (await r.json())["access_token"]
        audit = f"http://127.0.0.1:{settings.audit_port}"

        async def trail():
            async with http.get(f"{audit}/v1/trail/{alert_id}", headers={"Authorization": f"Bearer {token}"}) as r:
                return await r.json() if r.status == 200 else {"entries": []}

        n = 2 + 2 * len(EXPECTED_RECIPIENTS)
        story = await poll(trail, lambda t: len(t["entries"]) >= n)
        async with http.get(f"{audit}/v1/trail/{alert_id}") as r:
            assert r.status == 401, "the trail is for auditors only"
    types = [e["type"] for e in story["entries"]]
    assert len(types) == n
    assert types[:2] == ["alert.submitted", "alert.routed"]
    assert sorted(types[2:]) == ["delivery.requested"] * 7 + ["delivery.status"] * 7
    position = {e["event_id"]: k for k, e in enumerate(story["entries"])}
    for e in story["entries"][1:]:
        assert position[e["causation_id"]] < position[e["event_id"]], "cause logged before effect"


async def test_bad_requests_change_nothing(settings, services):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    receive_only = await make_key(settings, "kg-moi", Role.RECEIVE)
    base = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    before = await _submitted_count(settings)
    cases = [
        ({}, SCENARIO, 401, "missing API key"),
        ({"Authorization": "Bearer blo_nope_nope"}, SCENARIO, 401, "unknown or revoked"),
        ({"Authorization": f"Bearer {key}"}, {**SCENARIO, "sender_agency": "kg-customs"}, 403, "cannot submit in the name of"),
        ({"Authorization": f"Bearer {receive_only}"}, {**SCENARIO, "sender_agency": "kg-moi"}, 403, "needs role submit"),
        ({"Authorization": f"Bearer {key}"}, {k: v for k, v in SCENARIO.items() if k != "severity"}, 422, "severity"),
        ({"Authorization": f"Bearer {key}"}, {**SCENARIO, "tlp": "TLP:PURPLE"}, 422, "tlp"),
    ]
    async with aiohttp.ClientSession() as http:
        for headers, body, code, words in cases:
            async with http.post(base, json=body, headers=headers) as r:
                assert r.status == code, (body, await r.text())
                assert words in await r.text()
        async with http.post(base, data=b'{"sender_agency": "kg-sbs", ', headers={
                "Authorization": f"Bearer {key}", "content-type": "application/json"}) as r:
            assert r.status == 422 and "json_invalid" in await r.text()
    await asyncio.sleep(0.5)  # anything wrongly produced would reach the status view by now
    assert await _submitted_count(settings) == before


async def _submitted_count(settings) -> tuple[int, int]:
    """Return (messages on alerts.submitted, alert rows in the gateway's table), once both hold still:
    the status projection stores an earlier alert's row a poll after its message."""
    seen = await _submitted_count_now(settings)
    for _ in range(20):
        await asyncio.sleep(0.3)
        now = await _submitted_count_now(settings)
        if now == seen:
            return now
        seen = now
    return seen


async def _submitted_count_now(settings) -> tuple[int, int]:
    from shared.kafka import make_consumer

    from services.gateway import repository
    from shared import topics
    from tests.integration.conftest import in_session

    consumer = make_consumer(settings)
    await consumer.start()
    try:
        topic = settings.topic(topics.ALERTS_SUBMITTED.name)
        parts = [p for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            await consumer._client.force_metadata_update()
            parts = list(consumer.partitions_for_topic(topic))
        from aiokafka import TopicPartition
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    finally:
        await consumer.stop()
    return sum(ends.values()), await in_session(settings, "gateway", repository.count_alerts)
