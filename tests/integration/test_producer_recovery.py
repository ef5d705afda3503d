"""A producer that lost its sequence is replaced, once for a burst of failures, and the new one sends."""
from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from shared import topics
from shared.events import Envelope
from shared.kafka import make_producer, send
from shared.service import Runtime
from tests.conftest import APP_ENV, port
from tests.integration.test_batch_consumer import request

pytestmark = pytest.mark.stack


async def test_a_broken_producer_is_replaced_and_the_new_one_sends(settings):
    settings = settings.model_copy(update={"topic_prefix": f"{APP_ENV['BLONET_TOPIC_PREFIX']}renew."})
    await topics.create_topics(settings)  # its own: the running notifier must not receive the request it sends
    rt = Runtime("routing", port(61), settings)
    rt.producer = make_producer(settings)
    await rt.producer.start()
    old = rt.producer
    try:
        await rt.recover(KafkaConnectionError("a broker away"))
        assert rt.producer is old, "an outage alone keeps the producer"

        await rt.recover(OutOfOrderSequenceNumber())
        new = rt.producer
        assert new is not old and old._closed, "replaced, and the old one stopped"
        await rt.recover(OutOfOrderSequenceNumber())  # the other records in flight on the old one fail alike
        assert rt.producer is new, "one replacement for the burst"

        env: Envelope = request()
        await (await send(rt.producer, settings.topic(topics.DELIVERIES_REQUESTED.name), "k", env))

        # Kafka away (nothing listens on port 1): the replacement cannot start, so the old one stays.
        away = Runtime("routing", port(62), settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"}))
        away.producer = new
        await away.recover(OutOfOrderSequenceNumber())
        assert away.producer is new, "no half-started producer takes its place"
        await away.engine.dispose()
    finally:
        await rt.producer.stop()
        await rt.engine.dispose()
