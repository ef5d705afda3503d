"""CAP alert ids are agency-scoped (issue 12 defect 2): no agency takes another's alert by submitting its
CAP triple, stored originals are never overwritten, and alerts stored under the old ids keep them."""
from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from services.gateway import repository
from shared.auth import Role
from shared.cap import cap_alert_id, format_time, render_cap
from tests.integration.conftest import in_session, make_key
from tests.integration.test_end_to_end import _submitted_count
from tests.integration.test_gateway_edge import FUTURE
from tests.integration.test_routing import token_for, wait_for

pytestmark = pytest.mark.stack
CAP = {"Content-Type": "application/cap+xml"}
SENDER = "kg-sbs@sbs.gov.kg"
SENT = datetime(2026, 11, 1, 9, 30, tzinfo=timezone(timedelta(hours=6)))


def cap(identifier: str, *, agency: str = "kg-sbs", sent: datetime = SENT, references: list[str] | None = None, **changes) -> bytes:
    alert = {**FUTURE, "sender_agency": agency, "sender_post": None, **changes}
    return render_cap({"alert": alert}, sender=SENDER, identifier=identifier, sent=sent, references=references)


async def test_another_agency_cannot_take_a_cap_alert_id(settings, services):
    owner, other = await make_key(settings, "kg-sbs", Role.SUBMIT), await make_key(settings, "kg-customs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    original = cap("TAKE-1")
    async with aiohttp.ClientSession() as http:
        async with http.post(gw, data=original, headers={**CAP, "Authorization": f"Bearer {owner}"}) as r:
            assert r.status == 202, await r.text()
            mine = (await r.json())["id"]
        # The attack: kg-sbs's triple (readable by any recipient via ?format=cap), under kg-customs's own agency.
        forged = cap("TAKE-1", agency="kg-customs", headline="forged")
        async with http.post(gw, data=forged, headers={**CAP, "Authorization": f"Bearer {other}"}) as r:
            assert r.status == 202, await r.text()
            assert (await r.json())["id"] != mine, "another agency's triple never yields the owner's id"
        async with http.get(f"{gw}/{mine}", params={"format": "cap", "original": "true"},
                            headers={"Authorization": f"Bearer {owner}"}) as r:
            assert r.status == 200 and await r.read() == original, "the stored original is untouched"
        assert mine == str(cap_alert_id(SENDER, "TAKE-1", SENT, "kg-sbs")), "the agency is part of the id"

        # Once the directory lists kg-sbs's CAP senders, no other agency may use them at all.
        operator = await token_for(settings, http, "unodc", Role.OPERATOR)
        rules = f"http://127.0.0.1:{settings.routing_port}/v1/routing/rules"
        async with http.get(rules, headers=operator) as r:
            active = await r.json()
        content = copy.deepcopy(active["content"])
        next(a for a in content["directory"]["agencies"] if a["id"] == "kg-sbs")["cap_senders"] = [SENDER]
        try:
            async with http.put(rules, json=content, headers=operator) as r:
                assert r.status == 200, await r.text()

            async def refused():
                async with http.post(gw, data=cap("TAKE-2", agency="kg-customs"), headers={**CAP, "Authorization": f"Bearer {other}"}) as r:
                    return r.status == 403 and (await r.json())["code"] == "wrong_cap_sender"

            await wait_for(refused)  # the gateway follows the activation within a poll or two
            before = await _submitted_count(settings)
            assert await refused()
            await asyncio.sleep(0.5)
            assert await _submitted_count(settings) == before, "a refused message produces nothing"
        finally:
            async with http.put(rules, json=active["content"], headers=operator) as r:
                assert r.status == 200
            await asyncio.sleep(2.5)


async def test_alerts_stored_under_the_old_ids_keep_them_and_updates_still_thread(settings, services):
    """The migration: a CAP alert stored before ids were agency-scoped (its row as the old gateway wrote it)."""
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    legacy = cap_alert_id(SENDER, "OLD-1", SENT)
    assert legacy != cap_alert_id(SENDER, "OLD-1", SENT, "kg-sbs")
    body = cap("OLD-1")
    await in_session(settings, "gateway", lambda s: repository.record_alert(
        s, alert_id=legacy, thread_id=legacy, sender_agency="kg-sbs", submitted_by="before-the-upgrade",
        received_at=SENT, alert={**FUTURE, "sender_agency": "kg-sbs"}, cap={"sender": SENDER, "identifier": "OLD-1",
                                                                         "sent": format_time(SENT), "signed": False},
        cap_original=body))
    update = cap("OLD-2", sent=SENT + timedelta(hours=1), msg_type="update", references=[f"{SENDER},OLD-1,{format_time(SENT)}"])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(gw, data=body, headers=CAP) as r:  # the old message again: the old id
            assert r.status == 202 and (await r.json())["id"] == str(legacy), await r.text()
        async with http.post(gw, data=update, headers=CAP) as r:
            assert r.status == 202, await r.text()
            accepted = await r.json()
    assert accepted["thread_id"] == str(legacy), "an Update of an alert stored under its old id joins its thread"
    assert accepted["id"] == str(cap_alert_id(SENDER, "OLD-2", SENT + timedelta(hours=1), "kg-sbs"))


async def test_a_different_sender_for_an_existing_id_is_a_conflict(settings, services):
    """An id already held by another sender (here: a row planted under kg-sbs's next id) is 409, and it stays as it was."""
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    taken = cap_alert_id(SENDER, "CLASH-1", SENT, "kg-sbs")
    await in_session(settings, "gateway", lambda s: repository.record_alert(
        s, alert_id=taken, thread_id=taken, sender_agency="kg-sbs", submitted_by="someone-else", received_at=SENT,
        alert={**FUTURE}, cap={"sender": "other@sbs.gov.kg", "identifier": "CLASH-1", "sent": format_time(SENT), "signed": False},
        cap_original=b"<theirs/>"))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", data=cap("CLASH-1"), headers=CAP) as r:
            assert r.status == 409 and (await r.json())["code"] == "cap_id_taken", await r.text()
    row = await in_session(settings, "gateway", lambda s: repository.get_alert(s, taken))
    assert row["cap_original"] == b"<theirs/>" and row["cap"]["sender"] == "other@sbs.gov.kg"


async def test_the_original_is_kept_when_the_status_consumer_wrote_the_row_first(settings, services):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    the_id = cap_alert_id(SENDER, "RACE-1", SENT, "kg-sbs")
    await in_session(settings, "gateway", lambda s: repository.record_alert(  # as the status consumer writes it
        s, alert_id=the_id, thread_id=the_id, sender_agency="kg-sbs", submitted_by="k", received_at=SENT, alert={**FUTURE}))
    body = cap("RACE-1")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
        async with http.post(gw, data=body, headers=CAP) as r:
            assert r.status == 202 and (await r.json())["id"] == str(the_id), await r.text()
        async with http.get(f"{gw}/{the_id}", params={"format": "cap", "original": "true"}) as r:
            assert r.status == 200 and await r.read() == body
