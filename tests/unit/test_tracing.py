"""Trace context through BLOnet: W3C round trips, and the span tree of one Kafka hop, in memory.

Each test records spans with an SDK provider and an in-memory exporter (`tracing.use`), or with
tracing off (no provider), where the context must pass through every hop unchanged.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from uuid import UUID

import httpx
import pytest
from aiokafka.structs import ConsumerRecord
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from demo.scenario import SCENARIO
from services.gateway.service import traceparent_or_new
from shared import tracing
from shared.alerts import Alert
from shared.events import AlertRouted, AlertSubmitted, Envelope
from shared.ids import new_id
from shared.kafka import EventConsumer, envelope_headers, send
from shared.settings import Settings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans():
    """Record spans in memory while the test runs; tracing is off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    exporter.tracer = provider.get_tracer("test")
    yield exporter
    tracing.use(None)
    provider.shutdown()


def submitted(traceparent: str | None = None, cause: Envelope | None = None) -> Envelope:
    aid = new_id()
    return Envelope.wrap(AlertSubmitted(alert=Alert.model_validate(SCENARIO), submitted_by="k1"), origin_node="n1",
                         alert_id=aid, thread_id=aid, traceparent=traceparent, cause=cause)


def routed(cause: Envelope) -> Envelope:
    return Envelope.wrap(AlertRouted(ruleset_hash="h", recipients=[], denied=[]), origin_node="n1",
                         alert_id=cause.alert_id, thread_id=cause.thread_id, cause=cause)


class FakeProducer:
    """Stands in for AIOKafkaProducer: keeps what was sent, acknowledges each record at once."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[dict] = []
        self.fail = fail

    async def send(self, topic, value, key, headers):
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})
        ack = asyncio.get_running_loop().create_future()
        if self.fail:
            ack.set_exception(self.fail)
        else:
            ack.set_result(SimpleNamespace(partition=0, offset=len(self.sent) - 1))
        return ack

    async def send_and_wait(self, topic, value, key, headers):
        return await (await self.send(topic, value, key, headers))

    def records(self) -> list[ConsumerRecord]:
        return [ConsumerRecord(s["topic"], 0, n, 0, 0, s["key"], s["value"], None, len(s["value"]), -1, tuple(s["headers"]))
                for n, s in enumerate(self.sent)]


def parent_id(span) -> int | None:
    return span.parent.span_id if span.parent else None


def by_kind(exporter, kind: SpanKind) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


# --- carrying the context -----------------------------------------------------------------------

def test_kafka_headers_and_envelope_round_trip():
    headers = tracing.inject_headers([("event-type", b"alert.submitted")], tracing.context_of(TRACEPARENT))
    assert ("traceparent", TRACEPARENT.encode()) in headers
    context = tracing.extract_headers(headers)
    assert tracing.traceparent_of(context) == TRACEPARENT
    ctx = trace.get_current_span(context).get_span_context()
    assert ctx.is_remote and f"{ctx.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id_of(TRACEPARENT) == "0af7651916cd43dd8448eb211c80319c"

    env = submitted(TRACEPARENT)
    assert ("traceparent", TRACEPARENT.encode()) in envelope_headers(env)
    assert ("alert-id", str(env.alert_id).encode()) in envelope_headers(env)
    assert tracing.traceparent_of(tracing.context_of(Envelope.from_bytes(env.to_bytes()).traceparent)) == TRACEPARENT


def test_nothing_or_garbage_extracts_to_no_context():
    for headers in (None, [], [("traceparent", b"not-a-traceparent")], [("traceparent", b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01")]):
        assert tracing.traceparent_of(tracing.extract_headers(headers)) is None
    assert tracing.trace_id_of(None) is None and tracing.trace_id_of("garbage") is None


def test_wrap_takes_the_current_span_else_keeps_the_cause():
    cause = submitted(TRACEPARENT)
    assert routed(cause).traceparent == TRACEPARENT  # off: the cause's, unchanged
    provider = TracerProvider()
    tracing.use(provider)
    try:
        assert routed(cause).traceparent == TRACEPARENT  # on, but no span: still the cause's
        with provider.get_tracer("t").start_as_current_span("work") as span:
            effect = routed(cause)
            assert effect.traceparent == tracing.traceparent_of(span)
            assert tracing.trace_id_of(effect.traceparent) != tracing.trace_id_of(TRACEPARENT)
            assert submitted(TRACEPARENT).traceparent == TRACEPARENT, "an explicit traceparent wins"
    finally:
        tracing.use(None)


# --- one hop, in memory -------------------------------------------------------------------------

async def test_one_kafka_hop_is_a_producer_consumer_producer_chain(spans):
    producer = FakeProducer()
    with spans.tracer.start_as_current_span("POST /v1/alerts", kind=SpanKind.SERVER) as server:
        env = submitted()  # the gateway: the request's span
        assert env.traceparent == tracing.traceparent_of(server)
        await (await send(producer, "t.alerts.submitted", str(env.thread_id), env))

    first = producer.records()
    published = []

    async def handler(records):
        for record in records:
            cause = Envelope.from_bytes(record.value)
            published.append(await send(producer, "t.alerts.routed", str(cause.thread_id), routed(cause)))
        await asyncio.gather(*published)

    consumer = EventConsumer(Settings(), group="t.routing", topics=["t.alerts.submitted"], handler=handler)
    await consumer._handle(first)

    (send_submitted, send_routed) = by_kind(spans, SpanKind.PRODUCER)
    (process,) = by_kind(spans, SpanKind.CONSUMER)
    (http,) = by_kind(spans, SpanKind.SERVER)
    trace_id = http.context.trace_id
    assert {s.context.trace_id for s in spans.get_finished_spans()} == {trace_id}
    assert parent_id(send_submitted) == http.context.span_id
    assert parent_id(process) == send_submitted.context.span_id, "the consumer span is the producer span's child"
    assert parent_id(send_routed) == process.context.span_id, "an event published while handling is the consumer's child"

    # What travelled: the envelope and the header both carry the producer span.
    sent = Envelope.from_bytes(first[0].value)
    assert sent.traceparent == tracing.traceparent_of(trace.NonRecordingSpan(send_submitted.context))
    assert dict(first[0].headers)["traceparent"] == sent.traceparent.encode()
    assert Envelope.from_bytes(producer.sent[1]["value"]).traceparent == tracing.traceparent_of(
        trace.NonRecordingSpan(send_routed.context))

    assert send_submitted.name == "send t.alerts.submitted"
    assert send_submitted.attributes["messaging.destination.name"] == "t.alerts.submitted"
    assert send_submitted.attributes["blonet.alert_id"] == str(sent.alert_id)
    assert send_submitted.attributes["blonet.event_type"] == "alert.submitted"
    assert send_submitted.attributes["messaging.kafka.offset"] == 0
    assert process.attributes["messaging.consumer.group.name"] == "t.routing"
    assert process.attributes["blonet.alert_id"] == str(sent.alert_id)
    assert process.attributes["messaging.message.id"] == str(sent.event_id)


async def test_each_record_of_a_batch_parents_its_own_effects(spans):
    producer = FakeProducer()
    for _ in range(3):
        await (await send(producer, "t.in", "k", submitted(traceparent_or_new(None))))
    records = producer.records()
    made: dict[UUID, Envelope] = {}

    async def handler(batch):
        for record in batch:
            cause = Envelope.from_bytes(record.value)
            made[cause.event_id] = routed(cause)  # wrapped, not yet sent: the batch is handled as a whole

    await EventConsumer(Settings(), group="g", topics=["t.in"], handler=handler)._handle(records)
    processes = {s.attributes["messaging.message.id"]: s for s in by_kind(spans, SpanKind.CONSUMER)}
    assert len(processes) == 3
    for event_id, effect in made.items():
        span = processes[str(event_id)]
        assert effect.traceparent == tracing.traceparent_of(trace.NonRecordingSpan(span.context))
        assert span.attributes["messaging.batch.message_count"] == 3


async def test_a_dead_lettered_record_marks_its_span(spans):
    producer = FakeProducer()
    await (await send(producer, "t.in", "k", submitted()))
    await (await send(producer, "t.in", "k", submitted()))
    records = producer.records()

    async def handler(batch):
        if any(r.offset == 1 for r in batch):
            raise ValueError("broken contract")

    consumer = EventConsumer(Settings(), group="g", topics=["t.in"], handler=handler, deadletter_topic="t.dlq")
    consumer.producer = producer
    await consumer._handle(records)
    assert producer.sent[-1]["topic"] == "t.dlq"
    status = {s.attributes["messaging.kafka.offset"]: s.status.status_code for s in by_kind(spans, SpanKind.CONSUMER)}
    assert status == {0: StatusCode.UNSET, 1: StatusCode.ERROR}


async def test_a_failed_send_ends_its_span_as_an_error(spans):
    ack = await send(FakeProducer(fail=RuntimeError("broker gone")), "t.x", "k", submitted())
    with pytest.raises(RuntimeError):
        await ack
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    (span,) = by_kind(spans, SpanKind.PRODUCER)
    assert span.status.status_code is StatusCode.ERROR and span.events[0].name == "exception"


async def test_off_the_traceparent_passes_every_hop_unchanged():
    assert not tracing.enabled()
    gateway = traceparent_or_new(None)  # what the gateway gives an alert when the client sent none
    producer = FakeProducer()
    await (await send(producer, "t.in", "k", submitted(gateway)))
    seen = []

    async def handler(batch):
        for record in batch:
            cause = Envelope.from_bytes(record.value)
            seen.append((dict(record.headers)["traceparent"].decode(), cause.traceparent, routed(cause).traceparent,
                         tracing.traceparent_for(cause)))

    await EventConsumer(Settings(), group="g", topics=["t.in"], handler=handler)._handle(producer.records())
    assert seen == [(gateway, gateway, gateway, gateway)]
    with tracing.client_span("POST", gateway, tracing.attempt_attributes({}, False)) as span:
        assert span is None and tracing.traceparent_of(span) is None  # the notifier then sends the stored one


# --- HTTP and the notifier's attempts -----------------------------------------------------------

def app_with_middleware() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/alerts/{alert_id}/ack")
    async def ack(alert_id: str) -> dict:
        return {"traceparent": tracing.current_traceparent()}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("boom")

    app.add_middleware(tracing.TraceMiddleware, service="test")
    return app


async def test_server_span_per_request_child_of_the_callers_context(spans):
    transport = httpx.ASGITransport(app=app_with_middleware(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.post("/v1/alerts/42/ack", headers={"traceparent": TRACEPARENT})
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/boom")).status_code == 500
    (ack, boom) = by_kind(spans, SpanKind.SERVER)  # none for /healthz
    assert ack.name == "POST /v1/alerts/{alert_id}/ack" and ack.attributes["http.route"] == "/v1/alerts/{alert_id}/ack"
    assert ack.attributes["http.response.status_code"] == 200
    assert f"{ack.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert parent_id(ack) == int("b7ad6b7169203331", 16)
    assert r.json()["traceparent"] == tracing.traceparent_of(trace.NonRecordingSpan(ack.context))
    assert boom.parent is None and boom.status.status_code is StatusCode.ERROR


async def test_off_the_middleware_makes_no_span():
    transport = httpx.ASGITransport(app=app_with_middleware())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        r = await http.post("/v1/alerts/42/ack", headers={"traceparent": TRACEPARENT})
    assert r.json() == {"traceparent": None}


async def test_delivery_attempt_is_a_client_span_sent_as_the_webhooks_traceparent(spans):
    row = {"delivery_id": new_id(), "alert_id": new_id(), "endpoint": "ep-a", "attempts": 2,
           "url": "https://hooks.example.org:8443/in?token=secret"}
    with tracing.client_span("POST", TRACEPARENT, tracing.attempt_attributes(row, email=False)) as span:
        sent = tracing.traceparent_of(span)
        tracing.attempt_outcome(span, 503, None, email=False)
    (client,) = by_kind(spans, SpanKind.CLIENT)
    assert sent == tracing.traceparent_of(trace.NonRecordingSpan(client.context))
    assert parent_id(client) == int("b7ad6b7169203331", 16)
    assert client.attributes["blonet.attempt"] == 3 and client.attributes["server.address"] == "hooks.example.org"
    assert client.attributes["server.port"] == 8443 and "secret" not in str(dict(client.attributes))
    assert client.attributes["http.response.status_code"] == 503 and client.status.status_code is StatusCode.ERROR


# --- switching it on ----------------------------------------------------------------------------

def test_configure_without_an_endpoint_leaves_tracing_off():
    tracing.configure("gateway", Settings(otlp_endpoint=None))
    assert not tracing.enabled()


def test_the_provider_exports_blonet_spans_over_otlp_http():
    provider = tracing.build_provider("notifier", Settings(otlp_endpoint="http://127.0.0.1:4318/"))
    try:
        assert provider.resource.attributes["service.name"] == "blonet-notifier"
        (processor,) = provider._active_span_processor._span_processors
        assert isinstance(processor, BatchSpanProcessor)
        assert processor._batch_processor._exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
    finally:
        provider.shutdown()
