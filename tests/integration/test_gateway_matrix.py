"""The authorization matrix of docs/api.md, read from the doc and checked cell by cell on the running gateway."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from shared.auth import Role
from shared.settings import REPO
from tests.integration.conftest import make_key
from tests.integration.test_end_to_end import poll
from tests.integration.test_gateway_edge import FUTURE, auth

pytestmark = pytest.mark.stack
ROLES = (Role.SUBMIT, Role.RECEIVE, Role.OPERATOR, Role.AUDITOR)
# Whose keys play each relation to the one test alert: sent by kg-sbs as TLP:RED to kg-moi's unit
# alone, so kg-sbs (whose BLO at Dostuk would otherwise receive it too) only sent it.
ALERT = {**FUTURE, "tlp": "TLP:RED", "addressees": ["kg-moi-dostuk"]}
AGENCY = {"sent": "kg-sbs", "received": "kg-moi", "other": "tj-bs", "own agency": "kg-sbs", "other agency": "kg-sbs", "any": "kg-sbs"}


def matrix() -> list[tuple[str, str, dict[Role, int]]]:
    doc = (REPO / "docs" / "api.md").read_text()
    section = doc.split("### Authorization matrix", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1], {r: int(c) for r, c in zip(ROLES, cells[2:])}))
    return rows


def test_the_matrix_covers_every_api_route():
    from services.gateway.app import build

    _, app = build()
    paths = app.openapi()["paths"]
    routes = {f"{m.upper()} {p.replace('{alert_id}', '{id}')}" for p, ops in paths.items() if p.startswith("/v1") for m in ops}
    documented = {endpoint.split("?")[0] for endpoint, _, _ in matrix()}
    assert routes == documented


async def listed(http: aiohttp.ClientSession, url: str, headers: dict) -> set[str]:
    """Return the ids of every alert the list shows this key, page by page."""
    ids, cursor = set(), None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        async with http.get(url, params=params, headers=headers) as r:
            assert r.status == 200, await r.text()
            page = await r.json()
        ids |= {item["id"] for item in page["items"]}
        if not (cursor := page["next_cursor"]):
            return ids


async def test_authorization_matrix(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    keys = {(agency, role): await make_key(settings, agency, role) for agency in set(AGENCY.values()) for role in ROLES}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw}/v1/alerts", json=ALERT, headers=auth(keys["kg-sbs", Role.SUBMIT])) as r:
            alert_id = (await r.json())["id"]

        async def received():
            async with http.get(f"{gw}/v1/alerts/{alert_id}", headers=auth(keys["kg-moi", Role.RECEIVE])) as r:
                return r.status == 200 and all(x["view"] for x in (await r.json())["received"])

        await poll(received, bool)
        wrong = []
        for endpoint, relation, expected in matrix():
            method, path = endpoint.split(" ", 1)
            path = path.replace("{id}", alert_id)
            for role, code in expected.items():
                key = keys[AGENCY[relation], role]
                body, params = None, {}
                if path == "/v1/alerts" and method == "POST":
                    body = FUTURE if relation == "own agency" else {**FUTURE, "sender_agency": "kg-customs"}
                elif path.endswith("/ack"):
                    body = {"status": "received"}
                elif path.endswith("/forward"):
                    body = {"to": ["kg-customs-dostuk"]}
                if path.endswith(("/events", "/stream")):
                    params = {"until_seconds": "0.2"}
                if "?box=" in path:  # a list: 200 if the alert is listed, 404 if not
                    status = 200 if alert_id in await listed(http, gw + path, auth(key)) else 404
                else:
                    async with http.request(method, gw + path, json=body, params=params, headers=auth(key)) as r:
                        await r.read()
                        status = r.status
                if status != code:
                    wrong.append(f"{endpoint} [{relation}] as {role}: {status}, expected {code}")
                await asyncio.sleep(0)
    assert not wrong, "\n".join(wrong)
