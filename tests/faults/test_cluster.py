"""A 3-broker Kafka cluster from the local stack: topics get three replicas with two in sync, and a
record acknowledged (acks=all) survives the SIGKILL of its partition's leader; writes go on."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared import topics
from shared.kafka import make_admin, make_consumer, make_producer
from shared.settings import REPO, Settings, get_settings
from tests.conftest import RUN, port

pytestmark = [pytest.mark.stack, pytest.mark.faults]
STACK = str(REPO / "deploy" / "stack.sh")


def stack(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([STACK, *args], env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private 3-node cluster (never the test stack): its stack folder, environment and bootstrap."""
    folder = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "BLONET_STACK_DIR": str(folder), "BLONET_KAFKA_PORT": str(port(350)),
           "BLONET_KAFKA_CONTROLLER_PORT": str(port(351))}
    up = stack(env, "start", "--brokers", "3", "kafka")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.count("kafka: started") == 3, up.stdout
        yield folder, env, stack(env, "bootstrap").stdout.strip()
    finally:
        down = stack(env, "stop", "kafka")
        assert down.returncode == 0, down.stdout + down.stderr


def broker_pid(folder: Path, node: int) -> int:
    return int((folder / ("kafka" if node == 1 else f"kafka-{node}") / "kafka.pid").read_text())


async def partition_state(admin: AIOKafkaAdminClient, topic: str) -> list[dict]:
    """The topic's partitions; retried while the admin client still asks a broker that was killed."""
    for _ in range(40):
        try:
            return (await admin.describe_topics([topic]))[0]["partitions"]
        except KafkaError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"no broker described {topic} for 20 s")


async def test_topics_have_three_replicas_and_survive_the_leader_being_killed(cluster):
    folder, env, bootstrap = cluster
    assert bootstrap.count(",") == 2
    settings = get_settings().model_copy(update={"kafka_bootstrap": bootstrap, "topic_prefix": f"c{RUN}.",
                                                  "secrets_file": folder / "kafka" / "secrets.json"})
    await topics.create_topics(settings)
    topic = settings.topic(topics.ALERTS_SUBMITTED.name)
    admin = make_admin(settings)
    await admin.start()
    producer = make_producer(settings)
    await producer.start()
    try:
        await asyncio.wait_for(_until_replicated(admin, topic), 60)
        leader = next(p["leader"] for p in await partition_state(admin, topic) if p["partition"] == 0)

        async def produce(first: int, n: int) -> None:
            acks = [await producer.send(topic, f"r{i}".encode(), partition=0) for i in range(first, first + n)]
            await asyncio.wait_for(asyncio.gather(*acks), 60)

        await produce(0, 100)
        os.kill(broker_pid(folder, leader), signal.SIGKILL)
        await produce(100, 100)  # a new leader is elected among the two replicas still in sync
        assert next(p["leader"] for p in await partition_state(admin, topic) if p["partition"] == 0) != leader
        assert await read_all(settings, topic) == [f"r{i}".encode() for i in range(200)]
        # read_all committed as a group: the offsets topic exists now, replicated like the others
        # (two of its three replicas in sync while the killed node is down).
        await asyncio.wait_for(_until_replicated(admin, "__consumer_offsets", in_sync=2), 60)
    finally:
        await producer.stop()
        await admin.close()
    again = stack(env, "start", "kafka")  # brings the killed node back; the others are left alone
    assert again.returncode == 0 and again.stdout.count("already running") == 2, again.stdout + again.stderr


async def _until_replicated(admin: AIOKafkaAdminClient, topic: str, in_sync: int = 3) -> None:
    while True:
        parts = await partition_state(admin, topic)  # empty while the broker is still creating the topic
        if parts and all(len(p["replicas"]) == 3 and len(p["isr"]) >= in_sync for p in parts):
            return
        await asyncio.sleep(0.5)


async def read_all(settings: Settings, topic: str) -> list[bytes]:
    consumer = make_consumer(settings, group_id=f"c{RUN}.reader", enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while len(values) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            values += [r.value for r in batch.get(tp, [])]
        await consumer.commit({tp: end})
        return values
    finally:
        await consumer.stop()
