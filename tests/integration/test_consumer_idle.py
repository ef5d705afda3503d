"""An idle consumer long-polls the broker, yet a record that arrives is handled at once."""
from __future__ import annotations

import asyncio
import time

import pytest

from shared import topics
from shared.events import Envelope
from shared.ids import new_id
from shared.kafka import EventConsumer, make_producer, send
from tests.conftest import APP_ENV
from tests.integration.test_batch_consumer import request

pytestmark = pytest.mark.stack
LONG_MS = 3000  # longer than any wait the test accepts, so a record held by the long poll fails it


@pytest.mark.parametrize("own_wait_ms, own_min_bytes", [(None, 1), (200, 1024 * 1024)], ids=["delivery-path", "background"])
async def test_an_idle_consumer_long_polls_and_still_gets_a_record_at_once(settings, own_wait_ms, own_min_bytes):
    """A background consumer too: its min bytes would hold the first record for the whole long wait."""
    # Topics of its own: the running notifier must not receive these requests.
    s = settings.model_copy(update={"idle_after_seconds": 1.0, "idle_fetch_max_wait_ms": LONG_MS,
                                    "topic_prefix": f"{APP_ENV['BLONET_TOPIC_PREFIX']}idle."})
    await topics.create_topics(s)
    own_wait_ms = own_wait_ms or settings.fetch_max_wait_ms
    seen: dict[str, float] = {}

    async def handler(records) -> None:
        for r in records:
            seen[dict(r.headers).get("event-id", b"").decode()] = time.monotonic()

    # 12 partitions: the fetch in flight while idle covers every one of them.
    consumer = EventConsumer(s, group=f"idle-{new_id()}", topics=[s.topic(topics.DELIVERIES_REQUESTED.name)],
                             handler=handler, fetch_max_wait_ms=own_wait_ms, fetch_min_bytes=own_min_bytes)
    task = asyncio.create_task(consumer.run())
    producer = make_producer(s)
    await producer.start()
    try:
        async def wait_ms() -> int | None:
            fetcher = getattr(consumer.consumer, "_fetcher", None)
            if fetcher is None:
                return None
            if fetcher._fetch_max_wait_ms == LONG_MS:
                assert fetcher._fetch_min_bytes == 1, "an idle fetch is answered at the first byte"
            else:
                assert fetcher._fetch_min_bytes == own_min_bytes
            return fetcher._fetch_max_wait_ms

        for _ in range(150):  # whatever earlier tests left on the topic is read first
            if await wait_ms() == LONG_MS:
                break
            await asyncio.sleep(0.1)
        assert await wait_ms() == LONG_MS, "the consumer never switched to the idle long poll"
        await asyncio.sleep(LONG_MS / 1000)  # the fetch in flight now is a long one

        for _ in range(3):  # each on a partition of its own key, each after a quiet spell
            env: Envelope = request()
            sent = time.monotonic()
            await (await send(producer, s.topic(topics.DELIVERIES_REQUESTED.name), str(new_id()), env))
            for _ in range(200):
                if str(env.event_id) in seen:
                    break
                await asyncio.sleep(0.01)
            took = seen[str(env.event_id)] - sent
            assert took < 1.0, f"a record waited {took:.2f} s behind the idle long poll"
            assert await wait_ms() == own_wait_ms, "records flow: back to the consumer's own fetch"
            await asyncio.sleep(1.5)  # idle again
            assert await wait_ms() == LONG_MS
    finally:
        await producer.stop()
        consumer.stop()
        await asyncio.wait_for(task, 10)
