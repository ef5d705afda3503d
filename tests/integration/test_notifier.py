"""The notifier against real endpoints: retries keep the webhook-id, dead letters, no head-of-line blocking."""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiohttp import web
from sqlalchemy import select

from services.notifier.models import attempts, deliveries
from shared import topics
from shared.events import DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id
from shared.kafka import make_producer, send
from tests.conftest import port
from tests.integration.conftest import in_session

pytestmark = pytest.mark.stack
PORT = port(20)


class Endpoints:
    """Test endpoints: /flaky fails twice then accepts, /down always 503, /slow takes 3 s, /fast at once."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, str]]] = defaultdict(list)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls[name].append((time.monotonic(), request.headers["webhook-id"]))
        if name == "flaky" and len(self.calls[name]) <= 2:
            return web.Response(status=500, text="temporarily broken")
        if name == "down":
            return web.Response(status=503, text="down for maintenance")
        if name == "slow":
            await asyncio.sleep(3)
        return web.Response(status=204)


@pytest.fixture
async def endpoints():
    eps = Endpoints()
    app = web.Application()
    app.add_routes([web.post("/{name}", eps.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    yield eps
    await runner.cleanup()


async def request_deliveries(settings, names: list[str]) -> dict[str, str]:
    """Put one delivery request per endpoint name on the topic, as routing would; return their ids."""
    producer = make_producer(settings)
    await producer.start()
    ids = {}
    try:
        for name in names:
            aid = new_id()
            req = DeliveryRequested(delivery_id=new_id(), endpoint=f"ep-test-{name}", agency="kg-sbs",
                                    url=f"http://127.0.0.1:{PORT}/{name}", profile=ViewProfile.FULL, body={"test": name})
            env = Envelope.wrap(req, origin_node="test", alert_id=aid, thread_id=aid)
            await (await send(producer, settings.topic(topics.DELIVERIES_REQUESTED.name), req.endpoint, env))
            ids[name] = str(req.delivery_id)
    finally:
        await producer.stop()
    return ids


async def attempt_log(settings, delivery_id: str) -> tuple[str, list[int | None]]:
    async def query(s):
        state = await s.scalar(select(deliveries.c.state).where(deliveries.c.delivery_id == delivery_id))
        codes = (await s.execute(select(attempts.c.http_status).where(attempts.c.delivery_id == delivery_id)
                                 .order_by(attempts.c.attempt))).scalars().all()
        return state, list(codes)
    return await in_session(settings, "notifier", query)


async def wait_for_state(settings, delivery_id: str, state: str, timeout: float = 20) -> list[int | None]:
    for _ in range(int(timeout / 0.1)):
        found, codes = await attempt_log(settings, delivery_id)
        if found == state:
            return codes
        await asyncio.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} never reached {state}: {await attempt_log(settings, delivery_id)}")


async def test_retries_keep_the_webhook_id_until_delivered(settings, services, endpoints):
    ids = await request_deliveries(settings, ["flaky"])
    assert await wait_for_state(settings, ids["flaky"], "delivered") == [500, 500, 204]
    assert [wid for _, wid in endpoints.calls["flaky"]] == [ids["flaky"]] * 3, "one webhook-id across retries"


async def test_exhausted_schedule_dead_letters(settings, services, endpoints):
    ids = await request_deliveries(settings, ["down"])
    # Test schedule: 0.2 s, 0.5 s, 1 s between attempts, then the dead letter.
    assert await wait_for_state(settings, ids["down"], "failed") == [503, 503, 503, 503]


async def test_a_slow_endpoint_does_not_hold_up_others(settings, services, endpoints):
    start = time.monotonic()
    ids = await request_deliveries(settings, ["slow", "fast"])
    await wait_for_state(settings, ids["fast"], "delivered")
    fast_done = time.monotonic() - start
    await wait_for_state(settings, ids["slow"], "delivered")
    assert fast_done < 2.0, f"fast endpoint waited {fast_done:.2f} s behind the slow one"
