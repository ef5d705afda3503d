"""A record no service can read never blocks a partition: it is skipped loudly, the rest flows."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from demo.scenario import SCENARIO
from shared import topics
from shared.auth import Role
from shared.kafka import make_producer
from tests.integration.conftest import make_key

pytestmark = pytest.mark.stack


async def test_garbage_on_every_partition_does_not_stop_routing(settings, services, inbox):
    producer = make_producer(settings)
    await producer.start()
    try:
        topic = settings.topic(topics.ALERTS_SUBMITTED.name)
        for partition in range(topics.ALERTS_SUBMITTED.partitions):
            await producer.send_and_wait(topic, b"\\xff not json", partition=partition)
            await producer.send_and_wait(topic, b'{"type": "alert.submitted", "payload": {}}', partition=partition)
    finally:
        await producer.stop()
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=SCENARIO) as r:
            assert r.status == 202, await r.text()
            alert_id = (await r.json())["id"]
    for _ in range(300):
        if any(m.body["alert_id"] == alert_id for m in inbox.received.get("ep-blo-dostuk", [])):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("an alert behind poison records was never delivered")
    assert "record rejected" in services["routing"].log.read_text()
