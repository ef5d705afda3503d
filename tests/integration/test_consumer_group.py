"""Two audit instances in one consumer group; one is SIGKILLed mid-stream: nothing lost, nothing twice."""
from __future__ import annotations

import asyncio
import signal
from uuid import UUID

import pytest
from sqlalchemy import func, select

from demo.scenario import SCENARIO
from services.audit import keys
from services.audit.models import checkpoints, entries
from shared import topics
from shared.alerts import Alert
from shared.auditproof import verify_log
from shared.events import AlertSubmitted, Envelope
from shared.ids import new_id
from shared.kafka import make_producer, send
from shared.settings import Settings
from tests.conftest import APP_ENV, port
from tests.integration.conftest import in_session, start_service, wait_ready

pytestmark = pytest.mark.stack
N = 3000


async def produce(settings: Settings, n: int) -> list[UUID]:
    """Produce n submitted-alert events over about two seconds; return their event ids."""
    producer = make_producer(settings)
    await producer.start()
    alert = Alert.model_validate(SCENARIO)
    ids, futures = [], []
    try:
        for i in range(n):
            aid = new_id()
            env = Envelope.wrap(AlertSubmitted(alert=alert, submitted_by="cg-test"), origin_node="test",
                                alert_id=aid, thread_id=aid)
            ids.append(env.event_id)
            futures.append(await send(producer, settings.topic(topics.ALERTS_SUBMITTED.name), str(aid), env))
            if i % 100 == 99:
                await asyncio.sleep(0.07)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return ids


async def count_logged(settings: Settings, ids: list[UUID]) -> int:
    return await in_session(settings, "audit", lambda s: s.scalar(
        select(func.count()).select_from(entries).where(entries.c.event_id.in_(ids))))


async def test_killed_instance_loses_nothing_and_duplicates_nothing(settings, tmp_path):
    prefix = APP_ENV["BLONET_TOPIC_PREFIX"] + "cg."
    cg = settings.model_copy(update={"topic_prefix": prefix})
    await topics.create_topics(cg)
    a = start_service("audit", tmp_path, {"BLONET_TOPIC_PREFIX": prefix, "BLONET_AUDIT_PORT": str(port(40))}, "-a")
    b = start_service("audit", tmp_path, {"BLONET_TOPIC_PREFIX": prefix, "BLONET_AUDIT_PORT": str(port(41))}, "-b")
    try:
        await wait_ready(port(40), a)
        await wait_ready(port(41), b)
        await asyncio.sleep(2)  # both members have joined the group and hold partitions
        producing = asyncio.create_task(produce(cg, N))
        await asyncio.sleep(1.0)
        b.stop(signal.SIGKILL)  # mid-stream: some of its batches are logged, some not yet committed
        ids = await producing
        logged = 0
        for _ in range(300):
            logged = await count_logged(settings, ids)
            if logged >= N:
                break
            await asyncio.sleep(0.2)
        assert logged == N, f"{logged} of {N} events logged"
        assert "partitions assigned" in b.log.read_text(), "the killed instance had taken part"
    finally:
        a.stop()
        b.stop(signal.SIGKILL)

    # Each event once (unique event_id), one gapless tree, and every checkpoint any instance signed fits it.
    rows = list(await in_session(settings, "audit", lambda s: s.execute(
        select(entries.c.idx, entries.c.entry).order_by(entries.c.idx))))
    assert [r.idx for r in rows] == list(range(len(rows)))
    notes = list(await in_session(settings, "audit", lambda s: s.scalars(
        select(checkpoints.c.note).order_by(checkpoints.c.tree_size))))
    verify_log([r.entry for r in rows], notes[-1], keys.load_signing_key(settings).verifier, history=notes)
