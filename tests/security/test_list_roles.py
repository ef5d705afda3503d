"""Defect 10: `GET /v1/alerts` must honour the key's roles, as `GET /v1/alerts/{id}` does.

Attack: a receive-only key of the sending agency lists its agency's sent box (and a submit-only
key of a recipient agency its received box), reading headlines the matrix answers 404 for.
"""
from __future__ import annotations

import aiohttp
import pytest

from shared.auth import Role
from tests.integration.conftest import make_key
from tests.integration.test_end_to_end import poll
from tests.integration.test_gateway_edge import FUTURE, auth

pytestmark = pytest.mark.stack


async def test_the_list_shows_only_what_the_keys_roles_may_read(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    sender = await make_key(settings, "kg-sbs", Role.SUBMIT)
    sender_receive_only = await make_key(settings, "kg-sbs", Role.RECEIVE)
    recipient = await make_key(settings, "kg-moi", Role.RECEIVE)
    recipient_submit_only = await make_key(settings, "kg-moi", Role.SUBMIT)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw}/v1/alerts", json={**FUTURE, "tlp": "TLP:RED", "addressees": ["kg-moi-dostuk"]},
                             headers=auth(sender)) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]

        async def listed(key: str, box: str = "all") -> set[str]:
            async with http.get(f"{gw}/v1/alerts", params={"box": box, "limit": "200"}, headers=auth(key)) as r:
                assert r.status == 200, await r.text()
                return {item["id"] for item in (await r.json())["items"]}

        await poll(lambda: listed(recipient), lambda ids: alert_id in ids)  # routed: the recipient sees it
        assert alert_id in await listed(sender, "sent")
        for box in ("all", "sent", "received"):
            assert alert_id not in await listed(sender_receive_only, box), f"receive-only key lists its sent box ({box})"
            assert alert_id not in await listed(recipient_submit_only, box), f"submit-only key lists its received box ({box})"
        # The same keys get 404 for the alert itself: the list must not show more than that.
        for key in (sender_receive_only, recipient_submit_only):
            async with http.get(f"{gw}/v1/alerts/{alert_id}", headers=auth(key)) as r:
                assert r.status == 404
