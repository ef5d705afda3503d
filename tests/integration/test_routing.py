"""Routing on the real stack: the precursor scenario, a forward, and hot rule changes across instances."""
from __future__ import annotations

import asyncio
import copy
from uuid import UUID

import aiohttp
import pytest
from aiokafka import TopicPartition

from demo.scenario import PRECURSORS, SCENARIO
from shared import topics
from shared.auth import Role
from shared.events import AlertForwarded, Envelope, RulesChanged
from shared.ids import new_id
from shared.kafka import make_consumer, make_producer, send
from tests.conftest import port
from tests.integration.conftest import make_key, start_service, wait_ready

pytestmark = pytest.mark.stack


async def token_for(settings, http: aiohttp.ClientSession, agency: str, role: Role) -> dict[str, str]:
    key = await make_key(settings, agency, role)
    async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/auth/token", headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, await r.text()
        return {"Authorization": f"Bearer {(await r.json())['access_token']}"}


async def wait_for(check, timeout: float = 20.0):
    for _ in range(int(timeout / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("gave up waiting")


def received(inbox, endpoint: str, alert_id: str) -> list[dict]:
    return [m.body for m in inbox.received.get(endpoint, []) if m.body["alert_id"] == alert_id]


async def test_precursor_alert_then_a_forward_within_amber(settings, services, inbox):
    key = await make_key(settings, "kg-customs", Role.SUBMIT)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=PRECURSORS,
                             headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]
        expected = {"ep-blo-dostuk", "ep-kg-moi-dostuk", "ep-uz-sbs-dustlik", "ep-kg-gknb-bgs", "ep-kz-mof", "ep-unodc"}
        await wait_for(lambda: asyncio.sleep(0, all(received(inbox, ep, alert_id) for ep in expected)))
        assert not received(inbox, "ep-kg-customs-dostuk", alert_id), "the originator is not told its own alert"
        assert "personal_data" not in received(inbox, "ep-uz-sbs-dustlik", alert_id)[0]["alert"]
        assert received(inbox, "ep-blo-dostuk", alert_id)[0]["alert"]["personal_data"]["vehicle_plates"] == ["01 KG 777 AAA"]

        # BLO Dostuk passes it on: to its own agency's unit at Kyzyl-Kiya (allowed under TLP:AMBER),
        # and to the police there (another agency at another post: refused).
        forward = AlertForwarded(forward_id=new_id(), agency="kg-sbs", unit="blo-dostuk", comment="усилить контроль",
                                 to=["kg-sbs-kyzyl-kiya", "kg-moi-kyzyl-kiya"], forwarded_by="test")
        env = Envelope.wrap(forward, origin_node="test", alert_id=UUID(alert_id), thread_id=UUID(alert_id))
        producer = make_producer(settings)
        await producer.start()
        try:
            await (await send(producer, settings.topic(topics.ALERTS_SUBMITTED.name), alert_id, env))
        finally:
            await producer.stop()
        got = await wait_for(lambda: asyncio.sleep(0, received(inbox, "ep-kg-sbs-kyzyl-kiya", alert_id)))
        assert got[0]["forwarded_by"] == {"agency": "kg-sbs", "unit": "blo-dostuk", "comment": "усилить контроль"}
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        async with http.get(f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{alert_id}", headers=operator) as r:
            decisions = await r.json()
        fwd = next(d["decision"] for d in decisions if d["kind"] == "forward")
        assert [x["unit"] for x in fwd["recipients"]] == ["kg-sbs-kyzyl-kiya"]
        assert [(x["unit"], x["code"]) for x in fwd["denied"]] == [("kg-moi-kyzyl-kiya", "tlp_amber")]
        assert not received(inbox, "ep-kg-moi-kyzyl-kiya", alert_id)


async def rules_events(settings) -> list[RulesChanged]:
    consumer = make_consumer(settings, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic(topics.ROUTING_RULES.name), 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    try:  # other tests put garbage on every topic to prove it is skipped
                        out.append(Envelope.from_bytes(r.value).payload_as(RulesChanged))
                    except ValueError:
                        continue
        return out
    finally:
        await consumer.stop()


async def test_rule_changes_are_validated_activated_everywhere_and_announced(settings, services, tmp_path):
    second = start_service("routing", tmp_path, {"BLONET_ROUTING_PORT": str(port(50))}, "-2")
    urls = [f"http://127.0.0.1:{settings.routing_port}", f"http://127.0.0.1:{port(50)}"]
    try:
        await wait_ready(port(50), second)
        async with aiohttp.ClientSession() as http:
            operator = await token_for(settings, http, "unodc", Role.OPERATOR)
            auditor = await token_for(settings, http, "unodc", Role.AUDITOR)
            async with http.get(f"{urls[0]}/v1/routing/rules", headers=operator) as r:
                active = await r.json()
            content = copy.deepcopy(active["content"])

            bad = {**content, "rules": {"rules": [{"id": "x", "named": ["ghost"]}]}}
            async with http.put(f"{urls[0]}/v1/routing/rules", json=bad, headers=operator) as r:
                assert r.status == 422 and (await r.json())["detail"]["problems"] == ["rules: rule x: unknown agency or unit ghost"]
            async with http.put(f"{urls[0]}/v1/routing/rules", json=content, headers=auditor) as r:
                assert r.status == 403, "auditors read rules, only operators change them"

            content["rules"]["rules"][0]["deny"] = ["unodc"]
            async with http.put(f"{urls[0]}/v1/routing/rules", json=content, headers=operator) as r:
                assert r.status == 200, await r.text()
                changed = await r.json()
            assert changed["changed"] and changed["ruleset_hash"] != active["ruleset_hash"]

            async def everyone_switched():
                hashes = []
                for url in urls:
                    async with http.get(f"{url}/v1/routing/rules", headers=auditor) as r:
                        hashes.append((await r.json())["ruleset_hash"])
                return set(hashes) == {changed["ruleset_hash"]}

            await wait_for(everyone_switched, timeout=5.0)
        second.stop()
        second = start_service("routing", tmp_path, {"BLONET_ROUTING_PORT": str(port(50))}, "-2")
        await wait_ready(port(50), second)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{urls[1]}/v1/routing/rules", headers=auditor) as r:
                assert (await r.json())["ruleset_hash"] == changed["ruleset_hash"], "a restart keeps the active version"
        announced = [e for e in await rules_events(settings) if e.ruleset_hash == changed["ruleset_hash"]]
        assert len(announced) == 1 and announced[0].previous_hash == active["ruleset_hash"]
        assert announced[0].source == "api" and announced[0].changed_by.startswith("key:")
        assert announced[0].content["rules"]["rules"][0]["deny"] == ["unodc"]
    finally:
        second.stop()
        # Put the demo rules back for the other tests of this run.
        async with aiohttp.ClientSession() as http:
            operator = await token_for(settings, http, "unodc", Role.OPERATOR)
            async with http.put(f"{urls[0]}/v1/routing/rules", json=active["content"], headers=operator) as r:
                assert r.status == 200
        await asyncio.sleep(2.5)


async def test_explain_under_a_candidate_compare_it_read_any_version_and_roll_back(settings, services):
    base = f"http://127.0.0.1:{settings.routing_port}/v1/routing"
    async with aiohttp.ClientSession() as http:
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        async with http.get(f"{base}/rules", headers=operator) as r:
            active = await r.json()
        assert set(active["history"][0]) == {"hash", "activated_at", "by", "source"}
        assert active["history"][0]["hash"] == active["ruleset_hash"]
        candidate = copy.deepcopy(active["content"])
        candidate["rules"]["rules"][0]["deny"] = ["unodc"]
        candidate["rules"]["rules"][0]["deny_reason"] = "UNODC reads this category elsewhere"
        alert = {"alert": SCENARIO}

        async with http.post(f"{base}/explain", json=alert, headers=operator) as r:
            now = await r.json()
        async with http.post(f"{base}/explain", json={**alert, "content": candidate}, headers=operator) as r:
            assert r.status == 200, await r.text()
            then = await r.json()
        assert "unodc" in {x["agency"] for x in now["recipients"]}
        assert ("unodc", "denied_by_rule") in {(d["agency"], d["code"]) for d in then["denied"]}
        assert then["ruleset_hash"] != active["ruleset_hash"] == now["ruleset_hash"]
        async with http.post(f"{base}/explain/compare", json={**alert, "content": candidate}, headers=operator) as r:
            compared = await r.json()
        assert compared["changes"] == [{"target": "unodc", "before": "summary view", "after": "denied: denied_by_rule"}]
        assert compared["active"] == now and compared["candidate"] == then
        bad = {**candidate, "rules": {"rules": [{"id": "x", "named": ["ghost"]}]}}
        for path in ("explain", "explain/compare"):
            async with http.post(f"{base}/{path}", json={**alert, "content": bad}, headers=operator) as r:
                assert r.status == 422 and (await r.json())["detail"]["problems"] == ["rules: rule x: unknown agency or unit ghost"]
        async with http.get(f"{base}/rules", headers=operator) as r:
            assert (await r.json())["ruleset_hash"] == active["ruleset_hash"], "explaining activates nothing"

        async with http.get(f"{base}/rules/{active['ruleset_hash']}", headers=operator) as r:
            stored = await r.json()
        assert stored["content"] == active["content"] and stored["created_by"]
        async with http.get(f"{base}/rules/sha256:{'0' * 64}", headers=operator) as r:
            assert r.status == 404

        try:
            async with http.put(f"{base}/rules", json=candidate, headers=operator) as r:
                changed = await r.json()
            async with http.put(f"{base}/rules", json=stored["content"], headers=operator) as r:
                assert await r.json() == {"ruleset_hash": active["ruleset_hash"], "changed": True}, "rolled back"
        finally:
            async with http.put(f"{base}/rules", json=active["content"], headers=operator) as r:
                assert r.status == 200
        async with http.get(f"{base}/rules", headers=operator) as r:
            after = await r.json()
        assert after["ruleset_hash"] == active["ruleset_hash"]
        assert [(h["hash"], h["source"]) for h in after["history"][:2]] == [
            (active["ruleset_hash"], "api"), (changed["ruleset_hash"], "api")]
        assert after["history"][0]["by"].startswith("key:")


async def test_bilateral_and_trilateral_agreements_over_one_border(settings, services, inbox):
    """The demo's KG–UZ bilateral protocol (listed first, no personal data) and the KG–UZ–TJ trilateral
    on wanted persons (personal data allowed): each view crosses under the agreement that covers it."""
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    wanted = {**SCENARIO, "category": "wanted_person", "addressees": ["uz-sbs-dustlik", "tj-bs-kyzyl-art"],
              "personal_data": {"names": ["A. Example"]}}
    risk = {**wanted, "category": "general_risk", "addressees": ["uz-sbs-dustlik"]}
    ids = {}
    async with aiohttp.ClientSession() as http:
        for name, body in (("wanted", wanted), ("risk", risk)):
            async with http.post(gw, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 202, await r.text()
                ids[name] = (await r.json())["id"]
        await wait_for(lambda: asyncio.sleep(0, all(received(inbox, ep, ids["wanted"]) for ep in ("ep-uz-sbs-dustlik", "ep-tj-bs-kyzyl-art"))
                                                and received(inbox, "ep-uz-sbs-dustlik", ids["risk"])))
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        decided = {}
        for name, alert_id in ids.items():
            async with http.get(f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{alert_id}", headers=operator) as r:
                decided[name] = {x["unit"]: x for x in (await r.json())[0]["decision"]["recipients"]}
    # Only the trilateral covers wanted persons: both neighbours get the name under it.
    for unit, ep in (("uz-sbs-dustlik", "ep-uz-sbs-dustlik"), ("tj-bs-kyzyl-art", "ep-tj-bs-kyzyl-art")):
        assert decided["wanted"][unit]["agreement"] == "kg-uz-tj-wanted-2016"
        assert decided["wanted"][unit]["basis"] == "the only agreement in force that covers it"
        assert received(inbox, ep, ids["wanted"])[0]["alert"]["personal_data"] == {"names": ["A. Example"], "document_numbers": [], "vehicle_plates": []}
    # Only the bilateral covers general risks, and it forbids personal data: the name stays home.
    assert decided["risk"]["uz-sbs-dustlik"]["agreement"] == "kg-uz-blo-2015"
    body = received(inbox, "ep-uz-sbs-dustlik", ids["risk"])[0]
    assert "personal_data" not in body["alert"] and body["redacted"] == ["personal_data"]
    assert decided["wanted"]["kg-moi-dostuk"]["agreement"] is None, "no border, no agreement"


async def test_an_observer_originates_only_where_the_directory_lets_it(settings, services, inbox):
    """Issue 15 point 4: 403 may_not_originate at the edge, nothing produced; once an activation sets
    may_originate, the gateway follows it from routing.rules, and the alert never comes back to its sender."""
    from tests.integration.test_end_to_end import _submitted_count

    key = await make_key(settings, "kz-mof", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    rules = f"http://127.0.0.1:{settings.routing_port}/v1/routing/rules"
    alert = {**SCENARIO, "sender_agency": "kz-mof", "sender_post": None}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        before = await _submitted_count(settings)
        async with http.post(gw, json=alert) as r:
            assert r.status == 403 and (await r.json())["code"] == "may_not_originate", await r.text()
        assert await _submitted_count(settings) == before
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        async with http.get(rules, headers=operator) as r:
            active = await r.json()
        content = copy.deepcopy(active["content"])
        next(a for a in content["directory"]["agencies"] if a["id"] == "kz-mof")["may_originate"] = True
        try:
            async with http.put(rules, json=content, headers=operator) as r:
                assert r.status == 200, await r.text()

            async def accepted():
                async with http.post(gw, json=alert) as r:
                    return (await r.json())["id"] if r.status == 202 else None

            alert_id = await wait_for(accepted)
            await wait_for(lambda: asyncio.sleep(0, received(inbox, "ep-kg-gknb-bgs", alert_id)))
            async with http.get(f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{alert_id}", headers=operator) as r:
                decision = (await r.json())[0]["decision"]
            assert "kz-mof" not in {x["agency"] for x in decision["recipients"] + decision["denied"]}
            assert not received(inbox, "ep-kz-mof", alert_id), "no observer copy of its own alert"
        finally:
            async with http.put(rules, json=active["content"], headers=operator) as r:
                assert r.status == 200
            await asyncio.sleep(2.5)  # every routing instance follows the restored version
