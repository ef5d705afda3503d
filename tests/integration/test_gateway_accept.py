"""The accept path writes nothing to the database, yet an alert is readable right after its 202:
on the instance that accepted it, and on another one (which waits for the status projection)."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone

import aiohttp
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from services.gateway import repository
from services.gateway.app import build
from services.gateway.lookup import AlertRows, minted_within
from services.gateway.ops import FlowHub
from shared import db, topics
from shared.auth import Role
from shared.cap import cap_alert_id
from shared.ids import new_id
from shared.service import Runtime
from shared.settings import Settings
from tests.conftest import RUN, port
from tests.integration.conftest import make_key, start_service, wait_ready
from tests.integration.test_audit_log import drop_database, own_database
from tests.integration.test_gateway_edge import FUTURE, auth, cap_xml

pytestmark = pytest.mark.stack
SECOND = port(130)
CAP = {"Content-Type": "application/cap+xml"}


@pytest.fixture(scope="module")
async def second(settings, services, tmp_path_factory) -> AsyncIterator[str]:
    """A second gateway instance on the same database and topics, in the same consumer group."""
    proc = start_service("gateway", tmp_path_factory.mktemp("second"), {
        "BLONET_GATEWAY_PORT": str(SECOND), "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{SECOND}"}, suffix="-second")
    try:
        await wait_ready(SECOND, proc)
        yield f"http://127.0.0.1:{SECOND}"
    finally:
        proc.stop()


async def test_a_get_right_after_the_202_answers_on_this_instance_and_another(settings, second):
    first = f"http://127.0.0.1:{settings.gateway_port}"
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers=auth(key)) as http:
        for accepting, other in ((first, second), (second, first)):
            for n in range(5):
                async with http.post(f"{accepting}/v1/alerts", json={**FUTURE, "headline": f"read at once {n}"}) as r:
                    assert r.status == 202, await r.text()
                    alert_id = (await r.json())["id"]
                for base in (accepting, other):  # no pause: the other instance may not have it stored yet
                    async with http.get(f"{base}/v1/alerts/{alert_id}") as r:
                        assert r.status == 200, (base, await r.text())
                        assert (await r.json())["id"] == alert_id

            # The CAP original, byte for byte, at once, on both.
            body = cap_xml(f"AT-ONCE-{uuid.uuid4().hex[:8]}")
            async with http.post(f"{accepting}/v1/alerts", data=body, headers=CAP) as r:
                assert r.status == 202, await r.text()
                alert_id = (await r.json())["id"]
            for base in (accepting, other):
                async with http.get(f"{base}/v1/alerts/{alert_id}", params={"format": "cap", "original": "true"}) as r:
                    assert r.status == 200 and await r.read() == body, (base, r.status)

        # An Update referencing an alert accepted a moment before on the other instance joins its thread.
        async with http.post(f"{first}/v1/alerts", json=FUTURE) as r:
            original = await r.json()
        async with http.post(f"{second}/v1/alerts", json={**FUTURE, "msg_type": "update", "references": [original["id"]]}) as r:
            assert r.status == 202, await r.text()
            assert (await r.json())["thread_id"] == original["thread_id"]

        # An id nobody minted lately is a 404 at once, not after the wait.
        started = time.monotonic()
        async with http.get(f"{second}/v1/alerts/{uuid.uuid4()}") as r:
            assert r.status == 404
        assert time.monotonic() - started < 2


# --- the wait, in process: woken by the projection's NOTIFY ---------------------------------------

@pytest.fixture
async def rows(settings) -> AsyncIterator[tuple[Runtime, AlertRows]]:
    rt = Runtime("gateway", port(131), settings)
    rt.engine = db.make_engine(settings, "gateway", pool_size=3)
    rt.sessions = db.make_sessionmaker(rt.engine)
    hub = FlowHub(rt)
    found = AlertRows(rt, hub, wait=8.0)
    listening = asyncio.create_task(hub.listener.run())
    await asyncio.wait_for(hub.listener.listening.wait(), 10)
    try:
        yield rt, found
    finally:
        rt.stopping.set()
        await listening
        await rt.engine.dispose()


async def store_later(rt: Runtime, alert_id: uuid.UUID, delay: float) -> None:
    await asyncio.sleep(delay)
    async with rt.sessions() as session:
        await repository.record_alert(session, alert_id=alert_id, thread_id=alert_id, sender_agency="kg-sbs", submitted_by="k",
                                      received_at=datetime.now(timezone.utc), alert=FUTURE)
        await repository.notify_changed(session, {alert_id})
        await session.commit()


async def test_another_instance_waits_for_the_projection_and_is_woken_by_it(rows):
    rt, found = rows
    loop = asyncio.get_running_loop()

    fresh = new_id()  # minted now, as the gateway mints ids without a key: may be in flight
    assert minted_within(fresh, 60)
    started = loop.time()
    late = asyncio.create_task(store_later(rt, fresh, 1.0))
    row = await found.get(fresh)
    await late
    assert row is not None and row["alert_id"] == fresh
    assert 0.9 <= loop.time() - started < 5, "waited for the projection, woken by its NOTIFY rather than the deadline"

    # A CAP id carries the message's own `sent` (here 2026-11-01): in flight only if a key reserved it.
    old = cap_alert_id("x@example.org", f"WAIT-{uuid.uuid4().hex[:6]}", datetime(2026, 11, 1, tzinfo=timezone.utc), "kg-sbs")
    assert not minted_within(old, 60)
    started = loop.time()
    assert await found.get(old) is None and loop.time() - started < 1, "unknown and not reserved: 404 at once"
    async with rt.sessions() as session:
        assert await repository.insert_key(session, agency="kg-sbs", key=f"cap:{old}", request_hash="h", alert_id=old)
        await session.commit()
    late = asyncio.create_task(store_later(rt, old, 1.0))
    assert (await found.get(old))["alert_id"] == old
    await late

    # The instance that accepted an alert answers from memory until the projection names it.
    mine = new_id()
    found.remember({"alert_id": mine, "sender_agency": "kg-sbs", "cap_original": None})
    assert (await found.get(mine))["alert_id"] == mine
    await store_later(rt, mine, 0)
    for _ in range(50):
        if mine not in found.recent:
            break
        await asyncio.sleep(0.1)
    assert mine not in found.recent, "dropped from memory once the projection's NOTIFY named it"

    # A list waits for this instance's accepts, but not for one the projection stored before it was remembered.
    early = new_id()
    await store_later(rt, early, 0)
    await asyncio.sleep(0.5)  # its NOTIFY has come and gone
    found.remember({"alert_id": early, "sender_agency": "kg-sbs", "cap_original": None})
    started = loop.time()
    await found.caught_up("kg-sbs")
    assert loop.time() - started < 2 and early not in found.recent
    pending = new_id()
    found.remember({"alert_id": pending, "sender_agency": "kg-sbs", "cap_original": None})
    late = asyncio.create_task(store_later(rt, pending, 1.0))
    started = loop.time()
    await found.caught_up("kg-sbs")
    await late
    assert 0.9 <= loop.time() - started < 5 and pending not in found.recent


# --- no commit in the accept path -------------------------------------------------------------

async def xact_commits(settings: Settings) -> int:
    admin = create_async_engine(URL.create("postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
                                           port=settings.pg_port, database="postgres"))
    try:
        async with admin.connect() as conn:
            await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return await conn.scalar(text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"),
                                     {"d": settings.pg_database})
    finally:
        await admin.dispose()


async def flushed() -> None:
    """Let every backend report its counts: a busy one reports at most once a second, an idle one within 10 s."""
    await asyncio.sleep(11)


async def test_the_accept_path_commits_nothing_without_an_idempotency_key(settings, services):
    """A gateway of its own database (its projection not running, so only the accept path could commit
    there), on the running stack's topics (so the directory is known): JSON accepts commit nothing;
    keyed ones commit twice each (reserve, answer), which shows the count would see a commit."""
    s = await own_database(settings, "accept")
    await db.migrate(s, "gateway")
    # It joins the running gateway's member group: two instances would halve the per-key limit it counts.
    s = s.model_copy(update={"rate_limit_per_second": 1e6, "rate_limit_burst": 10**6})
    rt, app = build(s)
    rt.consumers.clear()  # the status projection: it would commit the events these accepts produce
    committed = []
    event.listen(rt.engine.sync_engine, "commit", lambda conn: committed.append(1))
    key = await make_key(s, "kg-sbs", Role.SUBMIT)
    await rt.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=auth(key)) as http:
            async def accept(n: int, keyed: bool) -> None:
                for i in range(n):
                    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"} if keyed else {}
                    r = await http.post("/v1/alerts", json={**FUTURE, "headline": f"commit count {i}"}, headers=headers)
                    assert r.status_code == 202, r.text

            for _ in range(100):  # the directory arrives from the routing service's topic
                if (await http.post("/v1/alerts", json=FUTURE)).status_code == 202:
                    break
                await asyncio.sleep(0.2)
            await flushed()
            committed.clear()
            before = await xact_commits(s)
            await accept(40, keyed=False)
            await flushed()
            plain = await xact_commits(s) - before
            assert committed == [], "no transaction of the accept path committed"
            before = await xact_commits(s)
            await accept(20, keyed=True)
            await flushed()
            keyed = await xact_commits(s) - before
            assert len(committed) == 40
    finally:
        await rt.stop()
        await drop_database(s)
    # pg_stat_database counts every backend (autovacuum too): the 40 plain accepts add far fewer
    # commits than themselves, the 20 keyed ones at least their 40.
    assert plain < 20 and keyed >= 40, (plain, keyed)


async def test_two_instances_each_enforce_half_of_a_keys_rate_limit(settings, tmp_path):
    """Two gateways of their own (own topics, so own groups) with 1 request/s and bursts of 20 per key
    in all: once both count two live members, one of them lets about 10 of 20 quick requests through."""
    prefix = f"t{RUN}.rl."
    await topics.create_topics(settings.model_copy(update={"topic_prefix": prefix}))
    limits = {"BLONET_TOPIC_PREFIX": prefix, "BLONET_RATE_LIMIT_PER_SECOND": "1", "BLONET_RATE_LIMIT_BURST": "20"}
    procs = [start_service("gateway", tmp_path, {**limits, "BLONET_GATEWAY_PORT": str(p)}, suffix=f"-rl{p}")
             for p in (port(134), port(135))]
    try:
        for p, proc in zip((port(134), port(135)), procs):
            await wait_ready(p, proc)

        async def allowed_of_a_burst() -> int:
            key = await make_key(settings, "kg-sbs", Role.SUBMIT)  # a fresh key: a full bucket
            async with aiohttp.ClientSession(headers=auth(key)) as http:
                codes = []
                for _ in range(20):
                    async with http.get(f"http://127.0.0.1:{port(134)}/v1/alerts/{uuid.uuid4()}") as r:
                        codes.append(r.status)
            assert set(codes) <= {404, 429}
            return codes.count(404)

        for _ in range(30):  # the second instance's join rebalances the members' group within seconds
            if (allowed := await allowed_of_a_burst()) <= 15:
                break
            await asyncio.sleep(1)
        assert allowed <= 15, f"{allowed} of 20 passed: the instance still enforces the whole limit"
        assert '"instances": 2' in procs[0].tail(200), "the instance logged the count it enforces by"
    finally:
        for proc in procs:
            proc.stop()
