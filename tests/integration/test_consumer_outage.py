"""PostgreSQL restarted while alerts flow: an outage is waited out, nothing is dead-lettered, every alert arrives."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest

from demo.inbox import Inbox, serve
from demo.scenario import SCENARIO
from services.notifier import repository as notifier_repo
from services.routing.network import load_network
from shared import db, topics
from shared.events import AlertSubmitted, Envelope
from shared.ids import new_id
from shared.kafka import make_producer, send
from shared.settings import REPO, Settings
from tests.conftest import APP_ENV, port
from tests.integration.conftest import in_session, network_dir, read_topic, start_service, wait_ready

pytestmark = pytest.mark.stack
# A PostgreSQL of its own (Kafka is the shared one), so restarting it disturbs no other test.
PG, INBOX = port(70), port(75)
PORTS = {"gateway": port(71), "routing": port(72), "notifier": port(73), "audit": port(74)}
PRIVATE = {"BLONET_STACK_DIR": str(REPO / "var" / f"outage-pg-{PG}"), "BLONET_PG_PORT": str(PG)}
ALERTS = 40


def postgres(action: str) -> None:
    subprocess.run([str(REPO / "deploy" / "stack.sh"), action, "postgres"], env={**os.environ, **PRIVATE},
                   check=True, capture_output=True, timeout=180)


async def produce(settings: Settings, n: int, every: float) -> list[str]:
    """Submitted alerts straight onto the topic (the gateway needs the database to accept): their ids."""
    producer = make_producer(settings)
    await producer.start()
    ids = []
    try:
        for _ in range(n):
            aid = new_id()
            env = Envelope.wrap(AlertSubmitted(alert=SCENARIO, submitted_by="outage-test"), origin_node="test",
                                alert_id=aid, thread_id=aid)
            await (await send(producer, settings.topic(topics.ALERTS_SUBMITTED.name), str(aid), env))
            ids.append(str(aid))
            await asyncio.sleep(every)
    finally:
        await producer.stop()
    return ids


async def test_a_database_restart_mid_batch_dead_letters_nothing_and_loses_nothing(settings, tmp_path):
    postgres("start")
    s = settings.model_copy(update={"pg_port": PG, "topic_prefix": APP_ENV["BLONET_TOPIC_PREFIX"] + "pgout."})
    net = network_dir(tmp_path / "network", INBOX)
    env = {"BLONET_PG_PORT": str(PG), "BLONET_TOPIC_PREFIX": s.topic_prefix, "BLONET_NETWORK_DIR": str(net),
           **{f"BLONET_{name.upper()}_PORT": str(p) for name, p in PORTS.items()}}
    procs, runner = {}, None
    try:
        await db.bootstrap(s)
        for service in db.SERVICES:
            await db.migrate(s, service)
        await topics.create_topics(s)
        directory = load_network(net).directory
        await in_session(s, "notifier", lambda x: notifier_repo.ensure_endpoints(x, {e.id for e in directory.endpoints}))
        found = await in_session(s, "notifier", notifier_repo.secrets_by_endpoint)
        box = Inbox(secrets=lambda: found)
        runner = await serve(box, INBOX)
        procs = {name: start_service(name, tmp_path, env, "-pgout") for name in PORTS}
        for name, proc in procs.items():
            await wait_ready(PORTS[name], proc)

        flowing = asyncio.create_task(produce(s, ALERTS, every=0.15))
        await asyncio.sleep(2)  # some alerts handled, more on their way
        postgres("stop")
        await asyncio.sleep(3)  # every consumer's next batch meets the outage
        postgres("start")
        ids = await flowing

        for _ in range(600):
            got = {m.body["alert_id"] for m in box.received.get("ep-blo-dostuk", [])}
            if set(ids) <= got:
                break
            await asyncio.sleep(0.2)
        assert set(ids) <= got, f"{len(set(ids) - got)} of {len(ids)} alerts never delivered after the restart"
        for t in topics.SERVICE_DEADLETTERS:
            letters = await read_topic(s, s.topic(t.name), t.partitions)
            assert letters == [], f"{t.name} holds {len(letters)} records: an outage was taken for poison"
        logs = {name: proc.log.read_text(errors="replace") for name, proc in procs.items()}
        assert any("failed during an outage; retrying" in log for log in logs.values()), "the outage was never met"
        assert all("dead-lettered" not in log for log in logs.values())
        for name, proc in procs.items():
            assert proc.proc.poll() is None, f"{name} died during the outage:\n{proc.tail()}"
    finally:
        for proc in procs.values():
            proc.stop()
        if runner is not None:
            await runner.cleanup()
        # clean, not stop: in a checkout user postgres cannot enter, the cluster lives outside it
        subprocess.run([str(REPO / "deploy" / "stack.sh"), "clean"], env={**os.environ, **PRIVATE}, capture_output=True, timeout=180)
        shutil.rmtree(PRIVATE["BLONET_STACK_DIR"], ignore_errors=True)
