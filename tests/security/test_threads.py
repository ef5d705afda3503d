"""Defects 3 and 4 of issue 12 through the public API: every message of a thread is shaped by the
agreement in force for each recipient from its own content, and only the sender agency adds to its
thread. (The property test over random thread sequences is tests/unit/test_policy_threads.py.)"""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from demo.scenario import SCENARIO
from shared.auth import Role
from tests.integration.conftest import make_key
from tests.integration.test_routing import received, wait_for

pytestmark = pytest.mark.stack


async def test_a_cancel_carries_no_personal_data_across_a_border_that_forbids_it(settings, services, inbox):
    """The original had no personal data, so it redacted none; the Cancel names a person, and the KG–UZ
    bilateral (the only agreement covering general risks) forbids personal data: the name stays home."""
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    risk = {**SCENARIO, "category": "general_risk", "addressees": ["uz-sbs-dustlik"]}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw, json=risk, headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 202, await r.text()
            original = (await r.json())["id"]
        await wait_for(lambda: asyncio.sleep(0, received(inbox, "ep-uz-sbs-dustlik", original)))
        cancel = {**risk, "msg_type": "cancel", "references": [original], "personal_data": {"names": ["A. Example"]}}
        async with http.post(gw, json=cancel, headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 202, await r.text()
            cancel_id = (await r.json())["id"]
        got = await wait_for(lambda: asyncio.sleep(0, received(inbox, "ep-uz-sbs-dustlik", cancel_id)))
    body = got[0]
    assert not body["alert"].get("personal_data") and "personal_data" in body["redacted"], body
    assert "A. Example" not in str(body)
    kept = await wait_for(lambda: asyncio.sleep(0, received(inbox, "ep-kg-moi-dostuk", cancel_id)))
    assert kept[0]["alert"]["personal_data"]["names"] == ["A. Example"], "at home the name is kept"


async def test_only_the_sender_agency_adds_to_its_thread(settings, services, inbox):
    """Issue 12 defect 4 through the API: a recipient's message referencing the alert it received is
    refused whatever its msg_type, and nothing is produced or stored; it replies by forward or ack."""
    from tests.integration.test_end_to_end import _submitted_count

    sender = await make_key(settings, "kg-sbs", Role.SUBMIT)
    recipient = await make_key(settings, "kg-moi", Role.SUBMIT, Role.RECEIVE)
    gw = f"http://127.0.0.1:{settings.gateway_port}/v1/alerts"
    async with aiohttp.ClientSession() as http:
        async with http.post(gw, json=SCENARIO, headers={"Authorization": f"Bearer {sender}"}) as r:
            alert_id = (await r.json())["id"]

        async def received_it():
            async with http.get(f"{gw}/{alert_id}", headers={"Authorization": f"Bearer {recipient}"}) as r:
                return r.status == 200

        await wait_for(received_it)
        before = await _submitted_count(settings)
        for kind in ("alert", "update", "cancel"):
            reply = {**SCENARIO, "sender_agency": "kg-moi", "sender_post": "dostuk", "msg_type": kind,
                     "references": [alert_id], "tlp": "TLP:RED"}
            async with http.post(gw, json=reply, headers={"Authorization": f"Bearer {recipient}"}) as r:
                assert r.status == 403, (kind, await r.text())
                assert (await r.json())["code"] == "not_sender"
    await asyncio.sleep(0.5)  # anything wrongly produced would reach the status view by now
    assert await _submitted_count(settings) == before
