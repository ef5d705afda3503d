"""Delivery straight from the consumed batch (services/notifier/dispatch.py): a SIGKILL between the
POSTs and their group commit loses nothing and keeps webhook-ids; a hanging delivery is parked so
its partition's offset moves on; an endpoint may opt out of in-order delivery; retries pending
before upgrade 0005 are delivered after it with their original webhook-id.

Each test runs its own notifier process on its own database and topics.
"""
from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from aiohttp import web
from alembic import command
from sqlalchemy import select, text

from services.notifier.models import attempts, deliveries, retries
from services.notifier.recorder import Recorder
from shared import db, topics
from shared.ids import new_id
from shared.kafka import make_admin, make_producer
from shared.service import Runtime
from tests.conftest import port
from tests.integration.conftest import in_session, start_service, wait_ready
from tests.integration.test_notifier import register, request_deliveries, wait_for_state

pytestmark = pytest.mark.stack
RECEIVER_PORT, NOTIFIER_PORT = port(420), port(421)


@pytest.fixture
async def own(settings, request):
    """A private database and topic set; the attempt timeout (and so a lease) is short."""
    name = request.node.name[5:25]
    s = settings.model_copy(update={"pg_database": f"{settings.pg_database}_{name}", "topic_prefix": f"{settings.topic_prefix}{name}.",
                                    "webhook_timeout_seconds": 2.0})
    await db.bootstrap(s)
    await topics.create_topics(s)
    yield s
    await db.drop_database(s)


def notifier_env(s, **extra) -> dict[str, str]:
    return {"BLONET_PG_DATABASE": s.pg_database, "BLONET_TOPIC_PREFIX": s.topic_prefix,
            "BLONET_WEBHOOK_TIMEOUT_SECONDS": str(s.webhook_timeout_seconds), "BLONET_NOTIFIER_PORT": str(NOTIFIER_PORT),
            **{f"BLONET_{k.upper()}": str(v) for k, v in extra.items()}}


class Receiver:
    """Records webhook-ids and arrival times per path and the most requests it held at once; /hang
    holds its first request for a minute, /slow* each for `slow` seconds, /fail answers 500."""

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.busy: dict[str, int] = defaultdict(int)
        self.most: dict[str, int] = defaultdict(int)
        self.hanging = asyncio.Event()
        self.slow = 1.0

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls[name].append(request.headers["webhook-id"])
        self.times[name].append(time.monotonic())
        if name == "fail":
            return web.Response(status=500)
        self.busy[name] += 1
        self.most[name] = max(self.most[name], self.busy[name])
        try:
            if name == "hang" and len(self.calls[name]) == 1:
                self.hanging.set()
                await asyncio.sleep(60)
            if name.startswith("slow"):
                await asyncio.sleep(self.slow)
        finally:
            self.busy[name] -= 1
        return web.Response(status=204)


@pytest.fixture
async def receiver():
    r = Receiver()
    app = web.Application()
    app.add_routes([web.post("/{name}", r.handle)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", RECEIVER_PORT).start()
    yield r
    await runner.cleanup()


def url(name: str) -> str:
    return f"http://127.0.0.1:{RECEIVER_PORT}/{name}"


async def test_a_kill_between_the_posts_and_their_group_commit_loses_nothing_and_keeps_webhook_ids(own, receiver, tmp_path):
    s = own
    await db.migrate(s, "notifier")
    names = [f"gc{i}" for i in range(6)]
    await register(s, names)
    marker = tmp_path / "crash-marker"
    env = notifier_env(s, notifier_crash_marker=marker)
    first = start_service("notifier", tmp_path, env, suffix="-gc1")
    second = None
    try:
        await wait_ready(NOTIFIER_PORT, first)
        wanted = set()
        for _ in range(3):
            wanted |= set((await request_deliveries(s, names, url=url("gc"))).values())
        for _ in range(300):
            if first.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert first.proc.returncode == -signal.SIGKILL, first.tail()
        assert marker.exists(), "the hook fired"
        before_kill = set(receiver.calls["gc"])
        assert before_kill, "POSTs were made before the kill"
        recorded = await in_session(s, "notifier", lambda x: x.scalar(select(attempts.c.id).limit(1)))
        assert recorded is None, "the kill came before any attempt was recorded"

        second = start_service("notifier", tmp_path, env, suffix="-gc2")  # the marker exists: the hook stays quiet
        await wait_ready(NOTIFIER_PORT, second)
        for delivery_id in wanted:
            await wait_for_state(s, delivery_id, "delivered", timeout=60)
        sent = receiver.calls["gc"]
        assert set(sent) == wanted, "every delivery arrived, under its own webhook-id and no other"
        again = [i for i in before_kill if sent.count(i) >= 2]
        assert sorted(again) == sorted(before_kill), "each POST made before the kill was made again, same webhook-id"
    finally:
        first.stop(signal.SIGKILL)
        if second:
            assert second.stop() in (0, -signal.SIGTERM), second.tail()


async def committed(s, group: str) -> dict[int, int]:
    admin = make_admin(s)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(s.topic(group))
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == s.topic(topics.DELIVERIES_REQUESTED.name) and meta.offset >= 0}


async def test_a_hanging_delivery_is_parked_so_its_partition_offset_moves_on(own, receiver, tmp_path):
    s = own
    await db.migrate(s, "notifier")
    await register(s, ["hang"])
    proc = start_service("notifier", tmp_path, notifier_env(s, park_after_seconds=0.5), suffix="-park")
    try:
        await wait_ready(NOTIFIER_PORT, proc)
        ids = await request_deliveries(s, ["hang"], url=url("hang"))
        await asyncio.wait_for(receiver.hanging.wait(), 30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum((await committed(s, "notifier")).values()) < 1:
            await asyncio.sleep(0.2)
        assert sum((await committed(s, "notifier")).values()) == 1, "the offset moved past the record while its POST hangs"
        assert len(receiver.calls["hang"]) == 1, "still the first request"
        parked = await in_session(s, "notifier", lambda x: x.execute(select(retries.c.leased_until, deliveries.c.state).join(
            deliveries, deliveries.c.delivery_id == retries.c.delivery_id).where(retries.c.delivery_id == ids["hang"])))
        leased_until, state = parked.one()
        assert state == "pending" and leased_until > datetime.now(timezone.utc), "parked, leased by the instance sending it"
        await wait_for_state(s, ids["hang"], "delivered", timeout=30)  # the timeout fails attempt 1, the retry succeeds
        assert receiver.calls["hang"] == [ids["hang"]] * 2
        assert await in_session(s, "notifier", lambda x: x.scalar(select(retries.c.delivery_id))) is None, \
            "the retry table holds only what is still to be sent"
    finally:
        assert proc.stop() in (0, -signal.SIGTERM), proc.tail()


async def test_an_endpoint_may_opt_out_of_in_order_delivery(own, receiver, tmp_path, settings):
    s = own
    await db.migrate(s, "notifier")
    await register(s, ["slow-ordered", "slow-parallel"])
    doc = yaml.safe_load((settings.network_dir / "directory.yaml").read_text())
    doc["endpoints"] += [{"id": "ep-test-slow-ordered", "agency": "kg-sbs", "url": url("slow-ordered")},
                         {"id": "ep-test-slow-parallel", "agency": "kg-sbs", "url": url("slow-parallel"), "in_order": False}]
    network = tmp_path / "network"
    network.mkdir()
    (network / "directory.yaml").write_text(yaml.safe_dump(doc))
    (network / "rules.yaml").write_text((settings.network_dir / "rules.yaml").read_text())
    proc = start_service("notifier", tmp_path, {**notifier_env(s, endpoint_window=3), "BLONET_NETWORK_DIR": str(network)},
                         suffix="-window")
    try:
        await wait_ready(NOTIFIER_PORT, proc)
        wanted = []
        for name in ("slow-ordered", "slow-parallel"):
            wanted += [(await request_deliveries(s, [name], url=url(name)))[name] for _ in range(6)]
        for delivery_id in wanted:
            await wait_for_state(s, delivery_id, "delivered", timeout=60)
        assert receiver.most["slow-ordered"] == 1, "in order: one request at a time"
        assert receiver.most["slow-parallel"] == 3, "opted out: the window's three at once"
        assert receiver.calls["slow-ordered"] == wanted[:6], "in the order requested"
    finally:
        assert proc.stop() in (0, -signal.SIGTERM), proc.tail()


OLD_DELIVERY = text("""
    INSERT INTO deliveries (delivery_id, request_event_id, alert_id, thread_id, endpoint, agency, url, body, state,
                            attempts, due_at, leased_until, created_at, schedule_start, format)
    VALUES (:id, :id, :id, :id, :endpoint, 'kg-sbs', :url, '{"test": "upgrade"}', 'pending', :attempts, :due, :leased,
            :due, 0, 'json')""")


async def test_retries_pending_before_the_upgrade_are_delivered_after_it_with_their_webhook_id(own, receiver, tmp_path):
    """Rows as the code at migration 0004 left them at a stop: a retry due, one leased by a worker
    mid-attempt, one due later. Stop, migrate, start: each goes out with its original webhook-id."""
    s = own
    await asyncio.to_thread(command.upgrade, db._alembic_config(s, "notifier"), "0004")
    await register(s, ["old"])
    now = datetime.now(timezone.utc)
    old = {"due": (new_id(), 1, now - timedelta(seconds=5), None),
           "leased": (new_id(), 0, now - timedelta(seconds=1), now + timedelta(minutes=5)),
           "later": (new_id(), 2, now + timedelta(seconds=3), None)}

    async def leave(x):
        for delivery_id, tries, due, leased in old.values():
            await x.execute(OLD_DELIVERY, {"id": delivery_id, "endpoint": "ep-test-old", "url": url("old"),
                                           "attempts": tries, "due": due, "leased": leased})
    await in_session(s, "notifier", leave)
    await db.migrate(s, "notifier")
    queued = await in_session(s, "notifier", lambda x: x.execute(select(retries.c.delivery_id, retries.c.leased_until)))
    assert {(i, lease) for i, lease in queued} == {(v[0], None) for v in old.values()}, "carried, leases dropped"

    proc = start_service("notifier", tmp_path, notifier_env(s), suffix="-upgraded")
    try:
        await wait_ready(NOTIFIER_PORT, proc)
        for delivery_id, *_ in old.values():
            await wait_for_state(s, str(delivery_id), "delivered", timeout=30)
        assert sorted(receiver.calls["old"]) == sorted(str(v[0]) for v in old.values()), "each once, with its webhook-id"
        tries = await in_session(s, "notifier", lambda x: x.execute(
            select(deliveries.c.delivery_id, deliveries.c.attempts)))
        assert dict(tries.all()) == {v[0]: v[1] + 1 for v in old.values()}, "the attempt count carries on"
    finally:
        assert proc.stop() in (0, -signal.SIGTERM), proc.tail()



async def arrivals(receiver: Receiver, name: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.calls[name]) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(receiver.calls[name]) >= count, f"{name}: {len(receiver.calls[name])} of {count} arrived"


async def test_with_two_instances_each_endpoint_has_one_breaker_one_rate_and_one_window(own, receiver, tmp_path):
    """Issue 14: the instance owning an endpoint's partition holds its breaker, rate limit and window
    (retries too are claimed by the owner only), so two instances together send one request at a
    time to an in-order endpoint, at most the endpoint's rate, and stop after 3 failures (the
    tests' threshold) until the cooldown ends."""
    s = own
    await db.migrate(s, "notifier")
    slow = ["slow-a", "slow-b", "slow-c", "slow-d"]
    await register(s, [*slow, "fail", "paced"])
    receiver.slow = 0.3
    ports = (port(422), port(423))
    procs = [start_service("notifier", tmp_path, {**notifier_env(s, endpoint_rate_per_second=4, endpoint_burst=1),
                                                  "BLONET_NOTIFIER_PORT": str(p)}, suffix=f"-own{n}")
             for n, p in enumerate(ports)]
    try:
        for p, proc in zip(ports, procs):
            await wait_ready(p, proc)
        await asyncio.sleep(3)  # both members have joined: the partitions are split between them
        await request_deliveries(s, ["fail"] * 4, url=url("fail"))
        await arrivals(receiver, "fail", 3)
        await asyncio.sleep(1.0)  # within the 2 s cooldown
        assert len(receiver.calls["fail"]) == 3, "one circuit: open after 3 failures, whichever instance holds the retries"
        for name in slow:
            await request_deliveries(s, [name] * 4, url=url(name))
        await request_deliveries(s, ["paced"] * 8, url=url("paced"))
        for name in slow:
            await arrivals(receiver, name, 4)
        assert {n: receiver.most[n] for n in slow} == {n: 1 for n in slow}, "one request at a time per in-order endpoint"
        await arrivals(receiver, "paced", 8)
        times = receiver.times["paced"]
        assert times[-1] - times[0] >= 7 / 4 * 0.9, f"one rate of 4/s for the endpoint, not one per instance: {times}"
    finally:
        for proc in procs:
            assert proc.stop() in (0, -signal.SIGTERM), proc.tail()


async def test_a_result_the_database_refuses_is_left_alone_and_the_others_are_written(own):
    """The group commit isolates a result PostgreSQL refuses while the database and Kafka answer:
    the others of its batch are written, and that one is left unwritten (its record's offset stays)."""
    s = own
    await db.migrate(s, "notifier")
    rt = Runtime("notifier", port(424), s)
    rt.producer = make_producer(s)
    await rt.producer.start()
    recorder = Recorder(rt)
    task = asyncio.create_task(recorder.run())
    now = datetime.now(timezone.utc)

    def result(reason: str) -> dict:
        i = new_id()
        row = {"delivery_id": i, "request_event_id": i, "alert_id": i, "thread_id": i, "endpoint": "ep-x", "agency": "a",
               "url": "https://x.example/", "body": {}, "traceparent": None, "state": "failed", "attempts": 0, "due_at": now,
               "created_at": now, "finished_at": now, "reason": reason, "schedule_start": 0, "format": "json", "language": None}
        return {"row": row, "retry": None, "queued": False, "attempt": None, "watch": None, "events": []}

    try:
        results = [result("first"), result("a NUL \x00 here"), result("third")]
        done = [recorder.submit(r) for r in results]  # one batch: submitted together
        await asyncio.wait_for(asyncio.gather(done[0], done[2]), 30)
        assert not done[1].done(), "the refused one is not reported durable"
        stored = await in_session(s, "notifier", lambda x: x.execute(select(deliveries.c.delivery_id)))
        assert set(stored.scalars()) == {results[0]["row"]["delivery_id"], results[2]["row"]["delivery_id"]}
    finally:
        task.cancel()
        await rt.producer.stop()
        await rt.engine.dispose()
