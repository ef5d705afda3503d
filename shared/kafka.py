"""Kafka plumbing on aiokafka: a durable producer and an at-least-once batch consumer with dead letters."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError

from shared import failures, tracing
from shared.events import Envelope, EventType
from shared.metrics import CONSUMER_LAG, CONSUMER_RETRIES, EVENTS_REJECTED
from shared.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[ConsumerRecord]], Awaitable[None]]
Probe = Callable[[], Awaitable[object]]  # raises when a dependency (the database, the broker) is unreachable
LAG_INTERVAL_SECONDS = 1.0  # how often a consumer refreshes its lag gauges
BACKOFF_SECONDS = (0.25, 5.0)  # retry pause during an outage: first, then doubling up to the last
CONFIRM_SECONDS = 0.2  # a lone failing record is tried once more after this, before it is dead-lettered
# A dead letter carries the source record's value and key plus a few headers: its topics accept
# twice the broker's default record size, and so does the producer, so any source record fits.
DEADLETTER_MAX_BYTES = 2 * 1024 * 1024
DEADLETTER_HEADER = "blonet-deadletter-"  # prefix of the headers a dead letter adds
# aiokafka refreshes cluster metadata only this often (default 5 min): after a broker dies and comes
# back, a client still asking the old leader was seen stuck for minutes. One small request every 15 s
# bounds that.
METADATA_MAX_AGE_MS = 15_000
# With an offset gate, what the gate has finished is committed at most this often: the poll loop
# does not wait for a commit round trip after every poll (a crash replays at most this much more).
GATE_COMMIT_SECONDS = 0.2
# A member found dead after SESSION_TIMEOUT_MS; heartbeats at a third of it (Kafka's own ratio and
# default): a heartbeat is also how a member hears of a rebalance, so that waits up to 3 s more.
# Six groups heartbeating every second were a third of an idle broker's requests.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 3_000


SASL_MECHANISM = "SCRAM-SHA-512"


def client_options(settings: Settings) -> dict:
    """The connection options every Kafka client of BLOnet uses: the brokers, and the login of this
    process's principal (SASL/SCRAM-SHA-512, over TLS with SASL_SSL) when it has one."""
    options: dict = {"bootstrap_servers": settings.kafka_bootstrap}
    login = settings.kafka_login()
    if login is None:
        return options
    protocol = settings.kafka_security_protocol or "SASL_PLAINTEXT"
    options.update(security_protocol=protocol, sasl_mechanism=SASL_MECHANISM,
                   sasl_plain_username=login[0], sasl_plain_password=login[1])
    if protocol == "SASL_SSL":
        options["ssl_context"] = create_ssl_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    return options


def make_consumer(settings: Settings, *topics: str, **kwargs) -> AIOKafkaConsumer:
    """Return a consumer logged in as this process's principal (`kwargs`: any aiokafka option),
    with BLOnet's session, heartbeat and metadata refresh unless `kwargs` names its own."""
    defaults = {"session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
                "metadata_max_age_ms": METADATA_MAX_AGE_MS}
    return AIOKafkaConsumer(*topics, **client_options(settings), **{**defaults, **kwargs})


def make_admin(settings: Settings, **kwargs) -> AIOKafkaAdminClient:
    """Return an admin client logged in as this process's principal."""
    return AIOKafkaAdminClient(**client_options(settings), **kwargs)


def make_producer(settings: Settings, request_timeout_ms: int = 30_000) -> AIOKafkaProducer:
    """Return a producer that only reports success once every in-sync replica has the record.

    A record not acknowledged within `request_timeout_ms` fails its future and is dropped from
    the producer's buffer, so a caller told "failed" can rely on it not landing later.
    """
    return AIOKafkaProducer(
        **client_options(settings),
        enable_idempotence=True,  # implies acks=all; retries never duplicate or reorder
        acks="all",
        # No linger: a handler's sends of one loop pass leave in one request anyway (aiokafka drains
        # when the loop next runs, one request in flight per broker batches what comes meanwhile);
        # a linger only delayed every hop (bench: 1 ms per request, no fewer requests).
        linger_ms=0,
        request_timeout_ms=request_timeout_ms,
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        max_request_size=DEADLETTER_MAX_BYTES + 64 * 1024,  # the broker still enforces each topic's own limit
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


class ForeignEvent(ValueError):
    """A record's event type is not one its topic's producer publishes (the message names a known
    type only, never a string from the record)."""

    quotes_no_input = True

    def __init__(self, claimed: str, topic: str, allowed: frozenset[str]) -> None:
        shown = repr(claimed) if claimed in set(EventType) else "an unknown type"
        super().__init__(f"event type {shown} is not published on {topic} (its producer publishes "
                         f"{', '.join(sorted(allowed))})")


def event_type_of(value: bytes | None) -> str | None:
    """The `type` an envelope claims, or None when the value is not a JSON object with a string type."""
    try:
        found = orjson.loads(value).get("type") if value else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return found if isinstance(found, str) else None


class OffsetGate(Protocol):
    """A handler that finishes records after it has returned (the notifier delivers them later):
    the consumer then commits only the offsets the gate says are finished."""

    def polled(self, nexts: dict[TopicPartition, int]) -> None:
        """The poll's records up to these next offsets were handed over (or dead-lettered)."""

    def ready(self) -> dict[TopicPartition, int]:
        """Return the offsets that may be committed now (only those that moved since last asked)."""

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """These partitions are now this consumer's."""

    async def revoke(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Let go of these partitions; return the offsets to commit for them before they go."""


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: EventConsumer) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.runner.gate is not None:
            self.runner.settle()
            self.runner._done.update(await self.runner.gate.revoke(revoked))
        await self.runner.commit_done()
        self.runner.forget_lag(revoked)  # their new owner reports them now

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"group": self.runner.group, "count": len(assigned)})
        if self.runner.gate is not None:
            self.runner.gate.assigned(assigned)


def deadletter_of(record: ConsumerRecord) -> dict[str, str] | None:
    """Return the dead-letter headers of a record (group, topic, partition, offset, error…), or None."""
    found = {k.removeprefix(DEADLETTER_HEADER): v.decode("utf-8", "replace")
             for k, v in record.headers or () if k.startswith(DEADLETTER_HEADER) and v is not None}
    return found or None


class EventConsumer:
    """Consume a poll's records from all assigned partitions, hand them to `handler` in one call, commit.

    The handler must make its effects durable before returning (DB commit, produce acked):
    only then is `{tp: last.offset + 1}` committed for every partition of the poll, so a crash
    replays, never skips. When the handler fails:
    - an outage (a connection-level error, or one of `probes` fails too: the database does not
      answer `SELECT 1`, the broker gives no metadata) is waited out, retrying the same records
      with a growing pause, forever; nothing is dead-lettered;
    - otherwise the records are halved and each half handled again, until the failing record is
      alone; tried once more, it goes to `deadletter_topic` with its group, source coordinates
      and error (headers), and its offset moves on like the others'. The halves run inside one
      `transaction()` (the service's: each handler session is then a savepoint of it), so the
      poll's good records still commit together, once.
    Without a dead-letter topic every failure is retried, as an outage.
    With a `gate`, records are finished after the handler returns: each loop commits what the
    gate says is finished, and a revocation first lets the gate settle its partitions.
    """

    def __init__(
        self, settings: Settings, *, group: str, topics: Sequence[str], handler: Handler,
        max_records: int = 200, fetch_max_wait_ms: int | None = None, fetch_min_bytes: int = 1,
        deadletter_topic: str | None = None, probes: Sequence[Probe] = (),
        transaction: Callable[[], AbstractAsyncContextManager] = nullcontext,
        accepts: Mapping[str, frozenset[str]] | None = None, gate: OffsetGate | None = None,
        on_outage: Callable[[Exception], Awaitable[None]] | None = None,
    ) -> None:
        self.settings, self.group, self.topics, self.handler = settings, group, list(topics), handler
        self.max_records = max_records
        # Short waits keep the delivery path fast; consumers off it can poll far less often.
        self.fetch_max_wait_ms = fetch_max_wait_ms or settings.fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.deadletter_topic, self.probes, self.transaction = deadletter_topic, list(probes), transaction
        self.accepts = dict(accepts or {})  # topic -> the event types its producer publishes (checked when dead letters exist)
        self.producer: AIOKafkaProducer | None = None  # sends dead letters; the service's, set before run()
        self.gate = gate
        # Told of each outage failure before the retry (Runtime.recover: replace a broken producer); never raises.
        self.on_outage = on_outage
        self._settled_at = float("-inf")
        self._done: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self._lag_reported: set[TopicPartition] = set()
        self._lag_at = float("-inf")
        self._record_at = time.monotonic()

    def _make_consumer(self) -> AIOKafkaConsumer:
        return make_consumer(
            self.settings,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_min_bytes=self.fetch_min_bytes,
        )

    async def commit_done(self) -> None:
        if self._done:
            done, self._done = self._done, {}
            # A rebalance while a batch was in hand may have revoked some of its partitions: their
            # new owner replays those records (handlers are idempotent); committing them here would
            # fail (IllegalStateError) and stop the service.
            owned = self.consumer.assignment()
            done = {tp: offset for tp, offset in done.items() if tp in owned}
            if not done:
                return
            try:
                await self.consumer.commit(done)
            except (IllegalStateError, CommitFailedError) as exc:  # revoked during the commit itself
                log.warning("offsets not committed: the group rebalanced; the new owner replays them",
                            extra={"group": self.group, "error": repr(exc)})

    def settle(self) -> None:
        """Take the offsets the gate has finished since last asked (no gate: nothing to take)."""
        if self.gate is not None:
            self._done.update(self.gate.ready())

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
                records = [record for part in batches.values() for record in part]
                self._adapt_fetch_wait(bool(records))
                if records:
                    await self._handle(records)
                    polled = {tp: part[-1].offset + 1 for tp, part in batches.items() if part}
                    self.gate.polled(polled) if self.gate is not None else self._done.update(polled)
                if self.gate is None or time.monotonic() - self._settled_at >= GATE_COMMIT_SECONDS:
                    self._settled_at = time.monotonic()
                    self.settle()
                await self.commit_done()
                await self._report_lag()
        finally:
            try:
                self.settle()
                await self.commit_done()
            finally:
                self.forget_lag(set(self._lag_reported))
                await self.consumer.stop()

    def _adapt_fetch_wait(self, got_records: bool) -> None:
        """Long-poll while idle, answered at the first byte; the consumer's own fetch while records flow.

        An idle fetch asks for one byte and waits long: the broker answers as soon as data arrives,
        so this costs nothing but spares an idle broker 100 fetches a second. Under load the own
        settings apply: aiokafka leaves a partition out of the next fetch while its records are
        buffered and fetches it again only when that fetch has returned, so a short wait bounds the
        delay of its next record; and a background consumer's min bytes gathers full polls.
        aiokafka 0.14 fixes both at construction; the fetcher reads these attributes for every
        request (tests/integration/test_consumer_idle.py checks it).
        """
        now = time.monotonic()
        if got_records:
            self._record_at = now
        if now - self._record_at >= self.settings.idle_after_seconds:
            wait, least = max(self.fetch_max_wait_ms, self.settings.idle_fetch_max_wait_ms), 1
        else:
            wait, least = self.fetch_max_wait_ms, self.fetch_min_bytes
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is not None:
            fetcher._fetch_max_wait_ms, fetcher._fetch_min_bytes = wait, least

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

    async def _handle(self, records: list[ConsumerRecord]) -> None:
        """Handle one poll's records (any partitions) until each is done or dead-lettered."""
        # One CONSUMER span per record, child of its producer's; events the handler wraps with a
        # record's envelope as their cause become children of that record's span.
        with tracing.consuming(self.group, records) as spans:
            records = await self._refuse_foreign(records, spans)
            if not records:
                return
            if await self._outlasting(lambda: self._call(records, spans), "handler", spans) is None:
                return
            poison: list[tuple[ConsumerRecord, Exception]] = []

            async def isolate() -> None:
                nonlocal poison
                async with self.transaction():  # the tries are savepoints: the good records commit once
                    poison = await self._bisect(records, spans)

            failed = await self._outlasting(isolate, "isolating a poison record", spans)
            if failed is not None:  # the outer commit failed for another reason than an outage: unexpected
                raise failed
            for record, exc in poison:
                await self._dead_letter(record, exc, spans)

    async def _refuse_foreign(self, records: list[ConsumerRecord], spans: tracing.Batch) -> list[ConsumerRecord]:
        """Dead-letter each record whose event type its topic's producer does not publish; return the rest.

        Only that producer's principal may write the topic (ACLs), so this keeps a compromised or
        buggy service from passing off, say, a routing decision on a topic it owns. A record whose
        type cannot be read is left to the handler (which dead-letters it as poison)."""
        if not self.accepts or self.deadletter_topic is None:
            return records
        kept = []
        for record in records:
            allowed = self.accepts.get(record.topic)
            claimed = event_type_of(record.value) if allowed is not None else None
            if claimed is None or claimed in allowed:
                kept.append(record)
            else:
                await self._dead_letter(record, ForeignEvent(claimed, record.topic, allowed), spans)
        return kept

    async def _call(self, records: list[ConsumerRecord], spans: tracing.Batch) -> None:
        if len(records) == 1:
            with spans.current(records[0]):
                await self.handler(records)
        else:
            await self.handler(records)

    async def _bisect(self, records: list[ConsumerRecord], spans: tracing.Batch) -> list[tuple[ConsumerRecord, Exception]]:
        """Handle `records` half by half down to the failing ones; return them with their errors.

        An outage meanwhile raises: the whole isolation is rolled back and tried again later.
        """
        exc = await self._try(records, spans)
        if exc is None:
            return []
        if len(records) > 1:
            half = len(records) // 2
            return await self._bisect(records[:half], spans) + await self._bisect(records[half:], spans)
        await self._pause(CONFIRM_SECONDS)  # one more try, in case the probes missed a blip
        exc = await self._try(records, spans)
        return [] if exc is None else [(records[0], exc)]

    async def _try(self, records: list[ConsumerRecord], spans: tracing.Batch) -> Exception | None:
        try:
            await self._call(records, spans)
            return None
        except Exception as exc:  # noqa: BLE001 - classified here
            if await self._outage(exc):
                raise
            return exc

    async def _outlasting(self, operation: Callable[[], Awaitable[None]], what: str,
                          spans: tracing.Batch = tracing.OFF) -> Exception | None:
        """Run `operation`, retried with a growing pause while its failures are an outage."""
        pause = BACKOFF_SECONDS[0]
        while True:
            try:
                await operation()
                return None
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                if not await self._outage(exc):
                    return exc
                log.warning(f"{what} failed during an outage; retrying", extra={
                    "group": self.group, "error_class": failures.error_class(exc), "error": failures.describe(exc),
                    "retry_in_s": pause})
                spans.failed(exc)
                CONSUMER_RETRIES.labels(self.group).inc()
                if self.on_outage is not None:
                    await self.on_outage(exc)
                await self._pause(pause)
                pause = min(pause * 2, BACKOFF_SECONDS[1])

    async def _outage(self, exc: Exception) -> bool:
        if self.deadletter_topic is None or failures.transient(exc):
            return True
        for probe in self.probes:
            try:
                await probe()
            except Exception:  # noqa: BLE001 - any probe failure means a dependency is away
                return True
        return False

    async def _pause(self, seconds: float) -> None:
        """Sleep, but leave at once (raising) when the service stops: the batch is replayed later."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
        raise asyncio.CancelledError("consumer stopping with a batch unfinished; it is replayed on restart")

    async def _dead_letter(self, record: ConsumerRecord, exc: Exception, spans: tracing.Batch) -> None:
        """Move a poison record to the dead-letter topic (acked before its offset moves on).

        The log line names the record and the error, never its bytes. A record that is itself a
        dead letter is not sent again (no loops): it stays on its dead-letter topic.
        """
        spans.failed(exc, record)
        EVENTS_REJECTED.labels(self.group, record.topic).inc()
        facts = {"group": self.group, "topic": record.topic, "partition": record.partition, "offset": record.offset,
                 "error_class": failures.error_class(exc), "error": failures.describe(exc)}
        if deadletter_of(record) is not None:
            log.error("dead letter could not be handled; it stays on its topic", extra=facts)
            return
        headers = [*(record.headers or ()), *((DEADLETTER_HEADER + k, str(v).encode()) for k, v in facts.items())]

        async def send() -> None:
            await self.producer.send_and_wait(self.deadletter_topic, value=record.value, key=record.key, headers=headers)

        failed = await self._outlasting(send, "dead-lettering")
        if failed is not None:  # never expected (the topic takes any source record): do not skip silently
            raise failed
        log.error("record dead-lettered", extra={**facts, "deadletter_topic": self.deadletter_topic})
