"""Operators' JSON view of the flow (/v1/ops): the whole picture, operator role only, live over SSE."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from demo.scenario import EXPECTED_DENIED, SCENARIO
from shared.auth import Role
from tests.integration.conftest import make_key

pytestmark = pytest.mark.stack


async def test_ops_flow_lists_streams_and_is_for_operators_only(settings, services):
    operator = await make_key(settings, "unodc", Role.OPERATOR)
    submitter = await make_key(settings, "kg-sbs", Role.SUBMIT)
    base = settings.public_base_url
    async with aiohttp.ClientSession() as http:
        as_operator = {"Authorization": f"Bearer {operator}"}
        async with http.get(f"{base}/v1/ops/alerts", headers={"Authorization": f"Bearer {submitter}"}) as r:
            assert r.status == 403
        async with http.get(f"{base}/v1/ops/alerts") as r:
            assert r.status == 401

        stream = await http.get(f"{base}/v1/ops/stream", params={"category": "drugs"}, headers=as_operator,
                                timeout=aiohttp.ClientTimeout(total=30))
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        await asyncio.sleep(0.3)  # the stream is subscribed before the alert exists
        async with http.post(f"{base}/v1/alerts", json=SCENARIO, headers={"Authorization": f"Bearer {submitter}"}) as r:
            assert r.status == 202
            alert_id = (await r.json())["id"]
        loop = asyncio.get_running_loop()
        started, first_seen, seen = loop.time(), None, None
        while loop.time() - started < 20:
            line = (await asyncio.wait_for(stream.content.readline(), 20)).decode()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event["alert_id"] == alert_id:
                    first_seen = first_seen or loop.time() - started
                    seen = event
                    if event["state"] == "delivered":
                        break
        stream.close()
        assert first_seen is not None and first_seen < 2.0, "in the live flow within 2 s of acceptance"
        assert seen["state"] == "delivered" and len(seen["trace_id"]) == 32
        assert {(d["agency"], d["unit"]): d["code"] for d in seen["denied"]} == EXPECTED_DENIED

        async with http.get(f"{base}/v1/ops/alerts", params={"post": "dostuk", "tlp": SCENARIO["tlp"]}, headers=as_operator) as r:
            listed = (await r.json())["alerts"]
        assert alert_id in [a["alert_id"] for a in listed]
        async with http.get(f"{base}/v1/ops/alerts", params={"agency": "tj-bs"}, headers=as_operator) as r:
            assert alert_id not in [a["alert_id"] for a in (await r.json())["alerts"]], "denied agencies are not recipients"
        async with http.get(f"{base}/v1/ops/alerts/{alert_id}", headers=as_operator) as r:
            one = await r.json()
        assert one["thread"][0]["alert_id"] == alert_id and one["forwards"] == []
        async with http.get(f"{base}/v1/ops/alerts", params={"since": "yesterday"}, headers=as_operator) as r:
            assert r.status == 422
