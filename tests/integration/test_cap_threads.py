"""CAP as real feeds send it (issue 15, point 1), through every service.

An agency whose CAP senders the directory lists may name its own earlier messages that never came
through BLOnet: the message starts a thread routed by its own content, the unresolved references are
shown in status, the routing decision and the audit trail, and a referenced message that arrives later
joins that thread. References to another agency's messages stay refused. A `urn:uuid:` identifier is
an identifier like any other, and a sender of any length is accepted once the directory lists it.
"""
from __future__ import annotations

import asyncio
import copy
from datetime import timedelta

import aiohttp
import pytest

from shared.auth import Role
from shared.cap import cap_alert_id, format_time
from tests.capkeys import make_key as make_signing_key
from tests.conftest import RUN
from tests.integration.conftest import make_key
from tests.integration.test_gateway_edge import FUTURE, cap_xml
from tests.integration.test_routing import token_for, wait_for
from tests.security.test_cap_ids import CAP, SENDER, SENT, cap

pytestmark = pytest.mark.stack
SIGNER = make_signing_key("kg-sbs CAP signer")
LONG_SENDER = "regional-warning-centre-osh-" + "x" * 48 + "@sbs.gov.kg"  # CAP sets no length; no agency id is that long


@pytest.fixture
async def directory_lists_kg_sbs_senders(settings, services):
    """Activate a directory in which kg-sbs lists its CAP sender and its signing certificate; restore it after."""
    async with aiohttp.ClientSession() as http:
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        rules = f"http://127.0.0.1:{settings.routing_port}/v1/routing/rules"
        async with http.get(rules, headers=operator) as r:
            active = await r.json()
        content = copy.deepcopy(active["content"])
        sbs = next(a for a in content["directory"]["agencies"] if a["id"] == "kg-sbs")
        sbs.update(cap_senders=[SENDER, LONG_SENDER], cap_signing_certificates=[SIGNER.certificate_pem.decode()])
        async with http.put(rules, json=content, headers=operator) as r:
            assert r.status == 200, await r.text()
        try:
            yield operator
        finally:
            async with http.put(rules, json=active["content"], headers=operator) as r:
                assert r.status == 200
            await asyncio.sleep(2.5)  # the gateway follows the restored directory


async def test_an_update_of_an_unreceived_message_starts_a_thread_that_the_late_original_joins(settings, directory_lists_kg_sbs_senders):
    operator = directory_lists_kg_sbs_senders
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    early_sent = SENT - timedelta(hours=1)
    early = f"{SENDER},EARLY-{RUN},{format_time(early_sent)}"
    missing = str(cap_alert_id(SENDER, f"EARLY-{RUN}", early_sent, "kg-sbs"))
    update = SIGNER.sign(cap(f"UPD-{RUN}", msg_type="update", references=[early]))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async def accepted():
            async with http.post(gw, data=update, headers=CAP) as r:
                return await r.json() if r.status == 202 else None

        answer = await wait_for(accepted)  # refused (unknown_reference) until the gateway follows the activation
        assert answer["thread_id"] == answer["id"], "it starts its own thread"
        assert answer["cap"]["unresolved_references"] == [missing] and answer["cap"]["signature"]["state"] == "verified"
        async with http.get(f"{gw}/{answer['id']}") as r:
            assert (await r.json())["cap"]["unresolved_references"] == [missing]

        # Routed by its own content, and the decision says why.
        decisions = f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{answer['id']}"

        async def decided():
            async with http.get(decisions, headers=operator) as r:
                return (await r.json())[0]["decision"] if r.status == 200 else None

        decision = await wait_for(decided)
        assert decision["unresolved_references"] == [missing] and decision["recipients"]
        assert decision["note"].startswith("starts a thread: it references 1 earlier message(s) of kg-sbs that BLOnet never received")

        # The audit trail keeps the signature state and the unresolved references with the submitted event.
        auditor = await token_for(settings, http, "unodc", Role.AUDITOR)

        async def logged():
            async with http.get(f"http://127.0.0.1:{settings.audit_port}/v1/trail/{answer['id']}", headers=auditor) as r:
                entries = (await r.json())["entries"] if r.status == 200 else []
            return next((e["event"]["payload"] for e in entries if e["type"] == "alert.submitted"), None)

        submitted = await wait_for(logged)
        assert submitted["cap_signature"]["state"] == "verified" and submitted["unresolved_references"] == [missing]

        # The console's alert page shows both.
        base = f"http://127.0.0.1:{settings.gateway_port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as console:
            async with console.post(f"{base}/console/login", data={"api_key": await make_key(settings, "unodc", Role.OPERATOR)},
                                    headers={"Origin": base}) as r:
                assert r.status == 200, await r.text()
            async with console.get(f"{base}/console/alerts/{answer['id']}", headers={"Accept-Language": "en"}) as r:
                page = await r.text()
        assert 'id="cap-signature" class="sig-verified"' in page and "CN=kg-sbs CAP signer" in page
        assert f"<code>{missing}</code>" in page and "References BLOnet never received" in page
        assert "starts a thread: it references 1 earlier message(s)" in page, "the routing decision's note"

        # The referenced message arrives late: it gets the id the Update named, and joins its thread.
        async with http.post(gw, data=cap(f"EARLY-{RUN}", sent=early_sent), headers=CAP) as r:
            assert r.status == 202, await r.text()
            late = await r.json()
        assert (late["id"], late["thread_id"]) == (missing, answer["id"])

        # A Cancel of another unreceived message, without any thread: routed by its own content too.
        other = f"{SENDER},EARLIER-{RUN},{format_time(early_sent)}"
        async with http.post(gw, data=cap(f"CAN-{RUN}", msg_type="cancel", references=[other]), headers=CAP) as r:
            assert r.status == 202, await r.text()
            cancel = await r.json()
        decisions = f"http://127.0.0.1:{settings.routing_port}/v1/decisions/{cancel['id']}"
        assert (await wait_for(decided))["recipients"], "a Cancel that starts a thread reaches those its content selects"


async def test_references_to_another_agencys_messages_stay_refused(settings, directory_lists_kg_sbs_senders):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        own = cap(f"PROBE-{RUN}", msg_type="update", references=[f"{SENDER},GONE-{RUN},{format_time(SENT)}"])

        async def following():
            async with http.post(gw, data=own, headers=CAP) as r:
                return r.status == 202

        await wait_for(following)
        theirs = cap(f"X-{RUN}", msg_type="update", references=[f"kg-customs@customs.gov.kg,THEIRS-{RUN},{format_time(SENT)}"])
        async with http.post(gw, data=theirs, headers=CAP) as r:
            assert (r.status, (await r.json())["code"]) == (422, "unknown_reference")


async def test_urn_uuid_identifiers_and_long_listed_senders_are_accepted(settings, directory_lists_kg_sbs_senders):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        long_one = cap_xml(f"LONG-{RUN}").replace(b"kg-sbs@sbs.gov.kg", LONG_SENDER.encode())

        async def accepted():
            async with http.post(gw, data=long_one, headers=CAP) as r:
                return await r.json() if r.status == 202 else None

        answer = await wait_for(accepted)  # cap_unknown_sender until the gateway follows the activation
        async with http.get(f"{gw}/{answer['id']}") as r:
            assert (await r.json())["sender_agency"] == "kg-sbs", "the agency that lists the sender, not its local part"
        unlisted = cap_xml(f"LONG2-{RUN}").replace(b"kg-sbs@sbs.gov.kg", LONG_SENDER.replace("osh", "jalal-abad").encode())
        async with http.post(gw, data=unlisted, headers=CAP) as r:
            assert (r.status, (await r.json())["code"]) == (422, "cap_unknown_sender")

        # An existing alert's id as a urn:uuid identifier: a new alert of its own, never that one.
        async with http.post(gw, json={**FUTURE, "headline": f"JSON {RUN}"}) as r:
            assert r.status == 202
            existing = (await r.json())["id"]
        taker = cap_xml(f"urn:uuid:{existing}", headline=f"urn {RUN}")
        async with http.post(gw, data=taker, headers=CAP) as r:
            assert r.status == 202, await r.text()
            urn = await r.json()
        assert urn["id"] != existing and urn["cap"]["identifier"] == f"urn:uuid:{existing}"
        async with http.get(f"{gw}/{existing}") as r:
            assert (await r.json())["headline"] == f"JSON {RUN}", "the existing alert is untouched"
        async with http.post(gw, data=taker, headers=CAP) as r:  # the same message again: the same alert
            assert r.status == 202 and (await r.json())["id"] == urn["id"]
