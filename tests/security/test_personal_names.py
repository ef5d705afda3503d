"""Defect 11: free text where the network directory's ids belong (an alert's `addressees`, its
`sender_post`, a forward's `to`) would carry names and telephone numbers into audit entries that
are kept for good. Only directory ids pass: JSON gets a 422 naming the field (never quoting it) and
nothing is written; a valid CAP message is not refused, its unknown `<addresses>` are dropped and
counted, and the person's name reaches no topic (so no audit entry)."""
from __future__ import annotations

from uuid import uuid4

import aiohttp
import pytest

from shared import topics
from shared.auth import Role
from tests.integration.conftest import in_session, make_key, read_topic
from tests.integration.test_end_to_end import poll
from tests.integration.test_gateway_edge import FUTURE, auth, cap_xml

pytestmark = pytest.mark.stack
PERSON = "Ivan Petrov +996 555 123 456"


async def submitted_values(settings) -> list[bytes]:
    name = settings.topic(topics.ALERTS_SUBMITTED.name)
    return [r.value for r in await read_topic(settings, name, topics.ALERTS_SUBMITTED.partitions)]


async def alert_rows(settings) -> int:
    from sqlalchemy import text
    return await in_session(settings, "gateway", lambda s: s.scalar(text("SELECT count(*) FROM alerts")))


async def test_json_names_outside_the_directory_are_refused_naming_the_field(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    before_rows, before_topic = await alert_rows(settings), len(await submitted_values(settings))
    async with aiohttp.ClientSession() as http:
        for body, field, code in (
            ({**FUTURE, "addressees": ["kg-moi-dostuk", PERSON]}, ["body", "addressees", 1], "unknown_addressee"),
            ({**FUTURE, "sender_post": PERSON[:60]}, ["body", "sender_post"], "unknown_post"),
        ):
            async with http.post(f"{gw}/v1/alerts", json=body, headers=auth(key)) as r:
                text = await r.text()
                assert r.status == 422, text
                problem = await r.json()
                assert problem["code"] == code and [e["loc"] for e in problem["errors"]] == [field], problem
                assert "Ivan" not in text, "the refusal never quotes what it refuses"
    assert await alert_rows(settings) == before_rows and len(await submitted_values(settings)) == before_topic


async def test_a_forward_to_someone_outside_the_directory_is_refused(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    sender, moi = await make_key(settings, "kg-sbs", Role.SUBMIT), await make_key(settings, "kg-moi", Role.RECEIVE)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw}/v1/alerts", json={**FUTURE, "addressees": ["kg-moi-dostuk"]}, headers=auth(sender)) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]

        async def readable():
            async with http.get(f"{gw}/v1/alerts/{alert_id}", headers=auth(moi)) as r:
                return r.status

        await poll(readable, lambda status: status == 200)
        before = len(await submitted_values(settings))
        async with http.post(f"{gw}/v1/alerts/{alert_id}/forward", json={"to": ["kg-customs-dostuk", PERSON]},
                             headers=auth(moi)) as r:
            problem = await r.json()
            assert r.status == 422 and problem["code"] == "unknown_addressee", problem
            assert [e["loc"] for e in problem["errors"]] == [["body", "to", 1]] and "Ivan" not in str(problem)
    assert len(await submitted_values(settings)) == before, "no forward event was produced"


async def test_cap_addresses_outside_the_directory_are_dropped_and_counted(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    xml = cap_xml(f"names-{uuid4()}").replace(
        b"</cap:restriction>", f'</cap:restriction><cap:addresses>kg-moi-dostuk "{PERSON}"</cap:addresses>'.encode())
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw}/v1/alerts", data=xml, headers=auth(key, **{"Content-Type": "application/cap+xml"})) as r:
            accepted = await r.json()
            assert r.status == 202, accepted
    assert accepted["dropped"] == {"unknown_addressee": 1}
    mine = [v for v in await submitted_values(settings) if accepted["id"].encode() in v]
    assert mine and all(b"Ivan" not in v for v in mine), "the name reached alerts.submitted, and so the audit log"
    assert any(b"kg-moi-dostuk" in v for v in mine), "the directory id is kept"
