"""The fault harness's receiver: a signed delivery is recorded once per webhook-id; an endpoint made
to answer 503 or to hang records nothing, and the hanging one answers only after the heal."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import aiohttp
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from bench.faults import Receiver
from tests.conftest import port

pytestmark = pytest.mark.faults
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def signed(webhook_id: str, body: bytes) -> dict[str, str]:
    now = datetime.now(timezone.utc)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(SECRET).sign(webhook_id, now, body.decode()), "content-type": "application/json"}


async def test_faulty_endpoints_record_nothing_and_a_hang_lasts_until_the_heal():
    receiver = Receiver({"ok": SECRET, "bad": SECRET, "slow": SECRET})
    receiver.tag = "t-0"
    runner = await receiver.serve(port(362))
    url = f"http://127.0.0.1:{port(362)}/inbox/"
    body = orjson.dumps({"alert_id": "a1", "alert": {"headline": "t-0 1 Dostuk"}})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for _ in range(2):
                async with http.post(url + "ok", data=body, headers=signed("msg_1", body)) as r:
                    assert r.status == 200
            async with http.post(url + "ok", data=body, headers=signed("msg_2", body)) as r:
                assert r.status == 200
            async with http.post(url + "ok", data=body, headers={**signed("msg_3", body), "webhook-signature": "v1,AAAA"}) as r:
                assert r.status == 401

            receiver.faulty = {"bad": "503", "slow": "hang"}
            async with http.post(url + "bad", data=body, headers=signed("msg_4", body)) as r:
                assert r.status == 503
            slow = asyncio.create_task(http.post(url + "slow", data=body, headers=signed("msg_5", body)))
            await asyncio.sleep(0.5)
            assert not slow.done()
            receiver.healed.set()
            async with await asyncio.wait_for(slow, 5) as r:
                assert r.status == 503
    finally:
        await runner.cleanup()
    got = receiver.got
    assert got.ids == {("a1", "ok"): {"msg_1", "msg_2"}}
    assert (got.duplicates, got.bad_signatures, got.faulted, got.tagged) == (1, 1, 2, {"a1"})
