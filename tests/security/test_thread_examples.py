"""Twenty fixed thread sequences through the public API, the API-level half of issue 12's
adversarial property (the other half, on `policy.decide` alone, is tests/unit/test_policy_threads.py).

Each example: an alert from a random originating agency and post (random category, TLP,
addressees, personal data), an update and a cancel from its sender, a forward by one of its
recipients, and another agency's attempt to add to the thread. Whatever was accepted, every
delivery that arrived must have been decided by routing for that endpoint, must cross a border
only under an agreement in force between the two countries, and may carry personal data across a
border only where that agreement allows it. The other agency's attempt is always refused
(`403 not_sender`, or `422 unknown_reference` when it never received the alert).
"""
from __future__ import annotations

import asyncio
import random
from datetime import date

import aiohttp
import pytest
import yaml

from demo.scenario import SCENARIO
from shared.auth import Role
from shared.directory import Directory
from tests.integration.conftest import make_key
from tests.integration.test_routing import token_for

pytestmark = pytest.mark.stack
ORIGINATORS = {"kg-sbs": "bor-dobo", "kg-moi": "dostuk", "kg-customs": "dostuk", "uz-sbs": "dustlik", "tj-bs": "kyzyl-art"}
DIRECTIONS = (("KG", "UZ"), ("KG", "TJ"), ("UZ", "KG"), ("TJ", "KG"), ("KG", "KZ"))
SEGMENT_POST = {"KG-UZ": "dostuk", "KG-TJ": "kyzyl-art", "KG-KZ": "kyzyl-kiya"}
NAMES = ("blo-dostuk", "kg-moi-dostuk", "kg-customs-dostuk", "uz-sbs-dustlik", "tj-bs-kyzyl-art", "kz-mof", "unodc")


def example(seed: int) -> dict:
    rnd = random.Random(seed)
    sender = rnd.choice(sorted(ORIGINATORS))
    origin, to = rnd.choice(DIRECTIONS)
    segment = "-".join(sorted((origin, to), key=lambda c: c != "KG"))
    alert = {**SCENARIO, "sender_agency": sender, "sender_post": ORIGINATORS[sender],
             "category": rnd.choice(["drugs", "precursors", "weapons", "wanted_person", "vehicle_lookout", "general_risk"]),
             "tlp": rnd.choice(["TLP:CLEAR", "TLP:GREEN", "TLP:AMBER", "TLP:AMBER+STRICT", "TLP:RED"]),
             "location": {"post": SEGMENT_POST.get(segment, "dostuk"), "border_segment": segment,
                          "direction": {"from_country": origin, "to_country": to}},
             "addressees": rnd.sample(NAMES, rnd.randint(0, 2)),
             "headline": f"thread example {seed}"}
    if rnd.random() < 0.6:
        alert["personal_data"] = {"names": [f"Person {seed}"]}
    return {"alert": alert, "update_pd": rnd.random() < 0.5, "intruder": rnd.choice(sorted(set(ORIGINATORS) - {sender}))}


@pytest.fixture(scope="module")
def directory(settings) -> Directory:
    return Directory.model_validate(yaml.safe_load((settings.network_dir / "directory.yaml").read_text()))


async def test_twenty_thread_sequences_stay_within_the_policy(settings, services, inbox, directory):
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    keys = {a: await make_key(settings, a, Role.SUBMIT, Role.RECEIVE) for a in [*ORIGINATORS, "kz-mof", "kg-gknb-bgs", "unodc"]}
    country = {a.id: a.country for a in directory.agencies}
    agreements = {a.id: a for a in directory.agreements}
    accepted_alerts = refused_intruders = crossed = 0
    async with aiohttp.ClientSession() as http:
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)

        async def post(url: str, body: dict, agency: str) -> tuple[int, dict]:
            async with http.post(url, json=body, headers={"Authorization": f"Bearer {keys[agency]}"}) as r:
                return r.status, await r.json()

        async def decisions(alert_id: str) -> list[dict]:
            async with http.get(f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{alert_id}", headers=operator) as r:
                return (await r.json()) if r.status == 200 else []

        for seed in range(20):
            ex = example(seed)
            alert, sender = ex["alert"], ex["alert"]["sender_agency"]
            status, body = await post(gw, alert, sender)
            if status != 202:
                assert status in (403, 422), body  # a refusal is fine; it must say why
                continue
            accepted_alerts += 1
            thread = [body["id"]]
            update = {**alert, "msg_type": "update", "references": [body["id"]], "headline": f"update {seed}"}
            if ex["update_pd"]:
                update["personal_data"] = {"names": [f"Updated {seed}"]}
            for message in (update, {**update, "msg_type": "cancel", "headline": f"cancel {seed}"}):
                status, answer = await post(gw, message, sender)
                assert status == 202, answer
                thread.append(answer["id"])
            status, answer = await post(gw, {**alert, "sender_agency": ex["intruder"], "sender_post": ORIGINATORS[ex["intruder"]],
                                             "msg_type": "update", "references": [body["id"]]}, ex["intruder"])
            # not_sender if the intruder received the alert, else unknown_reference: it may not even learn it exists
            assert (status, answer["code"]) in ((403, "not_sender"), (422, "unknown_reference")), answer
            refused_intruders += 1
            first = await _settled(decisions, thread[0])
            recipient = next((r for d in first for r in d["decision"]["recipients"] if r["agency"] in keys and r["agency"] != sender), None)
            if recipient is not None:
                await post(f"{gw}/{thread[0]}/forward", {"to": [random.Random(seed).choice(NAMES)]}, recipient["agency"])
            for alert_id in thread:
                await _settled(decisions, alert_id)
                await asyncio.sleep(0.3)  # deliveries follow decisions within milliseconds here
                decided = await decisions(alert_id)  # again, after the deliveries: a forward's decision included
                by_endpoint = {r["endpoint"]: r for d in decided for r in d["decision"]["recipients"]}
                for endpoint, box in inbox.received.items():
                    for delivered in (m.body for m in box if m.body["alert_id"] == alert_id):
                        assert endpoint in by_endpoint, f"{alert_id} reached {endpoint}, which routing never chose"
                        r = by_endpoint[endpoint]
                        home, there = country[sender], country[r["agency"]]
                        if there is None or there == home:
                            continue
                        deal = agreements.get(r["agreement"] or "")
                        assert deal is not None and {home, there} <= set(deal.parties) and deal.active_on(date.today()), \
                            f"{alert_id} crossed to {there} without an agreement in force: {r}"
                        crossed += 1
                        if delivered["alert"].get("personal_data"):
                            assert deal.personal_data, f"personal data crossed to {there} under {deal.id}, which forbids it"
    assert accepted_alerts >= 10 and refused_intruders == accepted_alerts, (accepted_alerts, refused_intruders)
    assert crossed >= 5, f"only {crossed} deliveries crossed a border: the examples test too little"


async def _settled(decisions, alert_id: str, timeout: float = 20) -> list[dict]:
    """Routing's decisions on `alert_id`, once there is one."""
    for _ in range(int(timeout / 0.1)):
        if found := await decisions(alert_id):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no decision on {alert_id} after {timeout} s")
