"""With Kafka down the gateway answers 503 and accepts nothing; when Kafka returns, it accepts again."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiokafka import TopicPartition

from demo.scenario import SCENARIO
from shared import topics
from shared.auth import Role
from shared.events import Envelope
from shared.kafka import make_consumer
from shared.settings import REPO
from tests.conftest import port
from tests.integration.conftest import make_key, start_service, wait_ready

pytestmark = pytest.mark.stack
# A broker of its own, so stopping it disturbs no other test.
KAFKA, GATEWAY = port(31), port(30)
OUTAGE = {"BLONET_STACK_DIR": str(REPO / "var" / f"outage-stack-{KAFKA}"), "BLONET_KAFKA_PORT": str(KAFKA),
          "BLONET_KAFKA_CONTROLLER_PORT": str(port(32))}
OUTAGE_SECRETS = str(REPO / "var" / f"outage-stack-{KAFKA}" / "kafka" / "secrets.json")  # that broker's logins


def kafka(action: str) -> None:
    subprocess.run([str(REPO / "deploy" / "stack.sh"), action, "kafka"], env={**os.environ, **OUTAGE},
                   check=True, capture_output=True, timeout=180)


async def alert_ids_on(settings, name: str) -> list[str]:
    """Read every alert id on a topic from the beginning."""
    consumer = make_consumer(settings, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic(name), p) for p in range(topics.ALERTS_SUBMITTED.partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        ids = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [str(Envelope.from_bytes(r.value).alert_id) for r in records]
        return ids
    finally:
        await consumer.stop()


async def test_kafka_down_means_503_and_nothing_accepted(settings, tmp_path):
    kafka("start")
    outage = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{KAFKA}", "secrets_file": Path(OUTAGE_SECRETS)})
    await topics.create_topics(outage)
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    gw = start_service("gateway", tmp_path, {"BLONET_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA}", "BLONET_SECRETS_FILE": OUTAGE_SECRETS,
                                             "BLONET_GATEWAY_PORT": str(GATEWAY),
                                             "BLONET_ACCEPT_TIMEOUT_SECONDS": "3"})
    url = f"http://127.0.0.1:{GATEWAY}"
    try:
        await wait_ready(GATEWAY, gw)
        # No keep-alive: the broker restarts below take longer than uvicorn's idle timeout.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, connector=connector) as http:
            async with http.post(f"{url}/v1/alerts", json=SCENARIO) as r:
                assert r.status == 202, await r.text()
                accepted = [(await r.json())["id"]]
            kafka("stop")
            retry = {"Idempotency-Key": "outage-retry-1"}
            async with http.post(f"{url}/v1/alerts", json=SCENARIO, headers=retry) as r:
                assert r.status == 503, await r.text()
                assert r.headers["Retry-After"] == "5"
                assert "not accepted; retry" in (await r.json())["detail"]
            async with http.get(f"{url}/readyz") as r:
                assert r.status == 503 and (await r.json())["checks"]["kafka"] != "ok"
            kafka("start")
            statuses = []
            for _ in range(30):  # the producer reconnects by itself
                async with http.post(f"{url}/v1/alerts", json=SCENARIO, headers=retry) as r:
                    statuses.append(r.status)
                    if r.status == 202:
                        accepted.append((await r.json())["id"])
                        break
            assert statuses[-1] == 202, statuses
        # Every alert answered 202 is on the topic. The one answered 503 may still land once Kafka
        # is back (the producer retries what it had in flight), but its retry carried the same
        # Idempotency-Key, hence the same alert id: no second alert, at most a duplicate record.
        on_topic = await alert_ids_on(outage, topics.ALERTS_SUBMITTED.name)
        assert set(on_topic) == set(accepted) and len(on_topic) <= len(accepted) + 1
    finally:
        gw.stop()
        kafka("stop")
        shutil.rmtree(OUTAGE["BLONET_STACK_DIR"], ignore_errors=True)
