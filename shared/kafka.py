"""Kafka plumbing on aiokafka: a durable producer and an at-least-once batch consumer."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from aiokafka.errors import IllegalStateError

from shared import tracing
from shared.events import Envelope
from shared.metrics import CONSUMER_LAG, CONSUMER_RETRIES, EVENTS_REJECTED
from shared.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]
LAG_INTERVAL_SECONDS = 1.0  # how often a consumer refreshes its lag gauges


def make_producer(settings: Settings, request_timeout_ms: int = 30_000) -> AIOKafkaProducer:
    """Return a producer that only reports success once every in-sync replica has the record.

    A record not acknowledged within `request_timeout_ms` fails its future and is dropped from
    the producer's buffer, so a caller told "failed" can rely on it not landing later.
    """
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,  # implies acks=all; retries never duplicate or reorder
        acks="all",
        linger_ms=1,
        request_timeout_ms=request_timeout_ms,
    )


def envelope_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    """Return Kafka headers that let tooling route and trace without parsing the value."""
    headers = [("event-type", envelope.type.value.encode()), ("event-id", str(envelope.event_id).encode())]
    if envelope.alert_id is not None:
        headers.append(("alert-id", str(envelope.alert_id).encode()))
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent.encode()))
    return headers


async def send(producer: AIOKafkaProducer, topic: str, key: str, envelope: Envelope) -> asyncio.Future:
    """Queue one envelope; await the returned future for the broker's acknowledgement.

    With tracing on, the send is a PRODUCER span (child of the envelope's context) that ends at the
    acknowledgement, and the record's envelope and `traceparent` header carry that span, so the
    consumer's span is its child. Off, the envelope's traceparent goes out unchanged.
    """
    span = tracing.start_producer(topic, key, envelope)
    if span is not None:
        envelope = envelope.model_copy(update={"traceparent": tracing.traceparent_of(span) or envelope.traceparent})
    try:
        ack = await producer.send(
            topic, value=envelope.to_bytes(), key=key.encode(), headers=envelope_headers(envelope)
        )
    except BaseException as exc:
        if span is not None:
            tracing.end_producer(span, exc=exc)
        raise
    if span is not None:
        ack.add_done_callback(lambda done: tracing.end_producer(span, done))
    return ack


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: EventConsumer) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.runner.commit_done()
        self.runner.forget_lag(revoked)  # their new owner reports them now

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"group": self.runner.group, "count": len(assigned)})


class EventConsumer:
    """Consume batches per partition, hand each to `handler`, then commit explicit offsets.

    The handler must make its effects durable before returning (DB commit, produce acked):
    only then is `{tp: last.offset + 1}` committed, so a crash replays, never skips. A handler
    failing for a transient reason is retried from the first record of its batch after a pause;
    a record it refuses as invalid (ValueError, e.g. a pydantic ValidationError) is isolated,
    logged and skipped, so one poison record never blocks a partition.
    """

    def __init__(
        self, settings: Settings, *, group: str, topics: Sequence[str], handler: Handler,
        max_records: int = 200, fetch_max_wait_ms: int | None = None,
    ) -> None:
        self.settings, self.group, self.topics, self.handler = settings, group, list(topics), handler
        self.max_records = max_records
        # Short waits keep the delivery path fast; consumers off it can poll far less often.
        self.fetch_max_wait_ms = fetch_max_wait_ms or settings.fetch_max_wait_ms
        self._done: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self._lag_reported: set[TopicPartition] = set()
        self._lag_at = float("-inf")

    def _make_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )

    async def commit_done(self) -> None:
        if self._done:
            done, self._done = self._done, {}
            await self.consumer.commit(done)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Run until `stop()`; the batch in hand is finished and committed before leaving."""
        self.consumer = self._make_consumer()
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        try:
            while not self._stopping.is_set():
                batches = await self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
                for tp, records in batches.items():
                    await self._handle(tp, records)
                await self.commit_done()
                await self._report_lag()
        finally:
            try:
                await self.commit_done()
            finally:
                self.forget_lag(set(self._lag_reported))
                await self.consumer.stop()

    async def _report_lag(self) -> None:
        """Set each assigned partition's lag gauge (high watermark minus position), at most once a second.

        Both are in memory (every fetch response carries the watermark): no broker round trip.
        """
        now = time.monotonic()
        if now - self._lag_at < LAG_INTERVAL_SECONDS:
            return
        self._lag_at = now
        for tp in list(self.consumer.assignment()):
            try:
                high = self.consumer.highwater(tp)
                if high is None:  # not fetched yet, so no position to wait for either
                    continue
                lag = high - await self.consumer.position(tp)
            except (AssertionError, IllegalStateError):  # revoked meanwhile (a rebalance): nothing to report
                continue
            CONSUMER_LAG.labels(self.group, tp.topic, str(tp.partition)).set(max(0, lag))
            self._lag_reported.add(tp)

    def forget_lag(self, partitions: set[TopicPartition]) -> None:
        """Drop the lag gauges of partitions this consumer no longer owns."""
        for tp in partitions & self._lag_reported:
            CONSUMER_LAG.remove(self.group, tp.topic, str(tp.partition))
        self._lag_reported -= partitions

    async def _handle(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        # One CONSUMER span per record, child of its producer's; events the handler wraps with a
        # record's envelope as their cause become children of that record's span.
        with tracing.consuming(self.group, records) as spans:
            await self._handle_batch(tp, records, spans)

    async def _handle_batch(self, tp: TopicPartition, records: list[ConsumerRecord], spans: tracing.Batch) -> None:
        while True:
            try:
                await self.handler(records)
                self._done[tp] = records[-1].offset + 1
                return
            except ValueError as exc:  # bad bytes or a broken contract: retrying cannot help
                if len(records) > 1:  # find the poison record: the others are handled one by one
                    for record in records:
                        with spans.current(record):
                            await self._handle_batch(tp, [record], spans)
                    return
                spans.failed(exc, records[0])
                self._reject(tp, records[0])
                return
            except Exception as exc:  # database or broker trouble: retry the batch once it may be over
                log.exception("handler failed; retrying batch", extra={"group": self.group, "topic": tp.topic})
                spans.failed(exc)
                CONSUMER_RETRIES.labels(self.group).inc()
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(1.0)

    def _reject(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Skip a record no handler can use, loudly: it must never block its partition.

        The audit service keeps every record of every topic, rejected ones included.
        """
        log.error("record rejected", exc_info=True, extra={
            "group": self.group, "topic": tp.topic, "partition": tp.partition, "offset": record.offset,
            "value_excerpt": (record.value or b"")[:200].decode("utf-8", "replace"),
        })
        EVENTS_REJECTED.labels(self.group, tp.topic).inc()
        self._done[tp] = record.offset + 1
