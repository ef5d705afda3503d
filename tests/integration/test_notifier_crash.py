"""Crash safety: a notifier killed with SIGKILL mid-delivery loses nothing, and the redelivery
carries the same webhook-id; several instances share the work without sending anything twice.

These tests run their own notifier processes on their own database and topics, so the killed
instance is the only one that could have claimed the delivery.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict

import pytest
from aiohttp import web

from shared import db, topics
from tests.conftest import port
from tests.integration.conftest import start_service, wait_ready
from tests.integration.test_notifier import register, request_deliveries, wait_for_state

pytestmark = pytest.mark.stack
RECEIVER_PORT, NOTIFIER_PORTS = port(410), (port(411), port(412))


@pytest.fixture
async def crash_settings(settings):
    """A private database and topic set for these notifier instances; the attempt timeout (and so the lease) is short."""
    s = settings.model_copy(update={"pg_database": f"{settings.pg_database}_crash", "topic_prefix": f"{settings.topic_prefix}crash.",
                                    "webhook_timeout_seconds": 2.0})
    await db.bootstrap(s)
    await db.migrate(s, "notifier")
    await topics.create_topics(s)
    yield s
    await db.drop_database(s)


def notifier_env(s, n: int) -> dict[str, str]:
    return {"BLONET_PG_DATABASE": s.pg_database, "BLONET_TOPIC_PREFIX": s.topic_prefix,
            "BLONET_WEBHOOK_TIMEOUT_SECONDS": str(s.webhook_timeout_seconds), "BLONET_NOTIFIER_PORT": str(NOTIFIER_PORTS[n])}


class Receiver:
    """Counts requests per webhook-id; /hang never answers its first request."""

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = defaultdict(list)
        self.bodies: dict[str, list[dict]] = defaultdict(list)
        self.first_call = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls[name].append(request.headers["webhook-id"])
        self.bodies[name].append(await request.json())
        if name == "hang" and len(self.calls[name]) == 1:
            self.first_call.set()
            await asyncio.sleep(60)
        return web.Response(status=204)


@pytest.fixture
async def receiver():
    r = Receiver()
    app = web.Application()
    app.add_routes([web.post("/{name}", r.handle), web.post("/inbox/{name}", r.handle)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", RECEIVER_PORT).start()
    yield r
    await runner.cleanup()


async def test_kill_9_mid_delivery_loses_nothing_and_keeps_the_webhook_id(crash_settings, receiver, tmp_path):
    s = crash_settings
    await register(s, ["hang"])
    first = start_service("notifier", tmp_path, notifier_env(s, 0), suffix="-1")
    second = None
    try:
        await wait_ready(NOTIFIER_PORTS[0], first)
        ids = await request_deliveries(s, ["hang"], url=f"http://127.0.0.1:{RECEIVER_PORT}/hang")
        await asyncio.wait_for(receiver.first_call.wait(), 30)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-request: nothing recorded yet
        killed_at = time.monotonic()
        second = start_service("notifier", tmp_path, notifier_env(s, 1), suffix="-2")
        await wait_ready(NOTIFIER_PORTS[1], second)
        await wait_for_state(s, ids["hang"], "delivered", timeout=60)
        assert receiver.calls["hang"] == [ids["hang"]] * 2, "redelivered once, with the same webhook-id"
        assert time.monotonic() - killed_at < 30
    finally:
        first.stop(signal.SIGKILL)
        if second:
            second.stop()


async def test_two_instances_share_the_work_without_duplicates(crash_settings, receiver, tmp_path):
    s = crash_settings
    names = [f"share{i}" for i in range(12)]
    await register(s, names)
    procs = [start_service("notifier", tmp_path, notifier_env(s, n), suffix=f"-share{n}") for n in (0, 1)]
    try:
        for n, proc in enumerate(procs):
            await wait_ready(NOTIFIER_PORTS[n], proc)
        wanted = [
            (await request_deliveries(s, [name], url=f"http://127.0.0.1:{RECEIVER_PORT}/{name}"))[name]
            for _ in range(3) for name in names
        ]
        for delivery_id in wanted:
            await wait_for_state(s, delivery_id, "delivered", timeout=60)
        sent = [wid for name in names for wid in receiver.calls[name]]
        assert sorted(sent) == sorted(wanted), "each delivery sent exactly once"
    finally:
        for proc in procs:
            assert proc.stop() in (0, -signal.SIGTERM), proc.tail()
