"""Trace context over the real test Kafka: one hop with spans in memory, and the alert's trace id
from the gateway to the webhooks with tracing off (the default)."""
from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from aiohttp import web
from aiokafka import TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from demo.inbox import Inbox, serve
from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from services.gateway.service import traceparent_or_new
from services.notifier import repository as notifier_repo
from services.routing.network import load_network
from shared import db, topics, tracing
from shared.alerts import Alert
from shared.auth import Role
from shared.events import AlertRouted, AlertSubmitted, Envelope
from shared.ids import new_id
from shared.kafka import EventConsumer, make_consumer, make_producer, send
from shared.settings import Settings
from tests.conftest import port
from tests.integration.conftest import in_session, make_key, network_dir, start_service, wait_ready

pytestmark = pytest.mark.stack
CLIENT_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
async def hop_settings(settings) -> Settings:
    """The catalogue's topics under a prefix of their own: no running service consumes them."""
    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}trace."})
    await topics.create_topics(own)
    producer = make_producer(own)
    await producer.start()
    try:  # a consumer that subscribes before the broker reports the new topics would not see them for minutes
        for name in (topics.ALERTS_SUBMITTED.name, topics.ALERTS_ROUTED.name):
            await producer.partitions_for(own.topic(name))
    finally:
        await producer.stop()
    return own


async def one_hop(settings: Settings, group: str, make_envelope) -> list[tuple[str, Envelope, dict]]:
    """Publish one alert.submitted, consume it with an EventConsumer whose handler publishes its
    alert.routed, and consume that too; return (topic name, envelope, headers) of both records."""
    submitted_topic, routed_topic = settings.topic(topics.ALERTS_SUBMITTED.name), settings.topic(topics.ALERTS_ROUTED.name)
    producer = make_producer(settings)
    await producer.start()
    seen: list[tuple[str, Envelope, dict]] = []
    done = asyncio.Event()
    mine = make_envelope()

    async def handler(records) -> None:
        for record in records:
            env = Envelope.from_bytes(record.value)
            if env.alert_id != mine.alert_id:  # another test's, on the same topics
                continue
            seen.append((record.topic, env, {k: v.decode() for k, v in record.headers}))
            if record.topic == submitted_topic:
                effect = Envelope.wrap(AlertRouted(ruleset_hash="h", recipients=[], denied=[]), origin_node="test",
                                       alert_id=env.alert_id, thread_id=env.thread_id, cause=env)
                await (await send(producer, routed_topic, str(env.thread_id), effect))
            else:
                done.set()

    consumer = EventConsumer(settings, group=settings.topic(group), topics=[submitted_topic, routed_topic], handler=handler)
    running = asyncio.create_task(consumer.run())
    try:
        await (await send(producer, submitted_topic, str(mine.thread_id), mine))
        await asyncio.wait_for(done.wait(), 60)
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 30)
        await producer.stop()
    return seen


def submitted(traceparent: str | None = None) -> Envelope:
    aid = new_id()
    return Envelope.wrap(AlertSubmitted(alert=Alert.model_validate(SCENARIO), submitted_by="trace-test"),
                         origin_node="test", alert_id=aid, thread_id=aid, traceparent=traceparent)


async def test_a_kafka_hop_links_producer_and_consumer_spans(hop_settings):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        server = provider.get_tracer("test").start_span("POST /v1/alerts", kind=SpanKind.SERVER)

        def in_a_request() -> Envelope:
            with trace.use_span(server, end_on_exit=True):
                return submitted()  # as the gateway does: the request's span is the alert's context

        seen = await one_hop(hop_settings, "trace-on", in_a_request)
    finally:
        tracing.use(None)
        provider.shutdown()

    spans = exporter.get_finished_spans()
    (http,) = [s for s in spans if s.kind is SpanKind.SERVER]
    produced = {s.attributes["messaging.destination.name"]: s for s in spans if s.kind is SpanKind.PRODUCER}
    processed = {s.attributes["messaging.destination.name"]: s for s in spans if s.kind is SpanKind.CONSUMER}
    sub, routed = hop_settings.topic("alerts.submitted"), hop_settings.topic("alerts.routed")
    assert set(produced) == set(processed) == {sub, routed}
    assert {s.context.trace_id for s in spans} == {http.context.trace_id}, "one trace from the request on"
    assert produced[sub].parent.span_id == http.context.span_id
    assert processed[sub].parent.span_id == produced[sub].context.span_id, "consumer span: child of the producer span"
    assert produced[routed].parent.span_id == processed[sub].context.span_id, "published while handling: the consumer's child"
    assert processed[routed].parent.span_id == produced[routed].context.span_id
    for topic, env, headers in seen:  # the envelope and the Kafka header carry the producer span
        expected = tracing.traceparent_of(trace.NonRecordingSpan(produced[topic].context))
        assert env.traceparent == headers["traceparent"] == expected
    assert produced[sub].attributes["blonet.alert_id"] == str(seen[0][1].alert_id)
    assert produced[sub].attributes["blonet.event_type"] == "alert.submitted"


async def test_off_the_gateways_trace_context_reaches_the_consumer_unchanged(hop_settings):
    assert not tracing.enabled()
    gateway = traceparent_or_new(None)  # the context the gateway gives an alert sent without one
    seen = await one_hop(hop_settings, "trace-off", lambda: submitted(gateway))
    assert [topic for topic, _, _ in seen] == [hop_settings.topic("alerts.submitted"), hop_settings.topic("alerts.routed")]
    for _, env, headers in seen:
        assert env.traceparent == headers["traceparent"] == gateway
    assert tracing.trace_id_of(seen[-1][1].traceparent) == gateway.split("-")[1]


async def submitted_traceparent(settings: Settings, alert_id: str) -> str | None:
    """Read alerts.submitted from the start and return the traceparent of `alert_id`'s event."""
    consumer = make_consumer(settings, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = settings.topic(topics.ALERTS_SUBMITTED.name)
        consumer.assign([TopicPartition(topic, p) for p in range(topics.ALERTS_SUBMITTED.partitions)])
        await consumer.seek_to_beginning()
        for _ in range(100):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    with contextlib.suppress(ValueError):
                        env = Envelope.from_bytes(record.value)
                        if str(env.alert_id) == alert_id:
                            return env.traceparent
        return None
    finally:
        await consumer.stop()


async def test_every_webhook_carries_the_trace_id_the_gateway_gave_the_alert(settings, services, inbox):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(f"{base}/v1/alerts", json=SCENARIO) as r:
            assert r.status == 202, await r.text()
            assigned = (await r.json())["id"]
        async with http.post(f"{base}/v1/alerts", json=SCENARIO, headers={"traceparent": CLIENT_TRACEPARENT}) as r:
            assert r.status == 202, await r.text()
            continued = (await r.json())["id"]

    def webhooks(alert_id: str) -> list:
        return [m for box in inbox.received.values() for m in box if m.body["alert_id"] == alert_id]

    for _ in range(300):
        if len(webhooks(assigned)) == len(webhooks(continued)) == len(EXPECTED_RECIPIENTS):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"not every webhook arrived: {len(webhooks(assigned))}, {len(webhooks(continued))}")

    given = await submitted_traceparent(settings, assigned)
    assert given and tracing.trace_id_of(given)
    # Tracing is off in the services: the context passes every hop unchanged, webhook included.
    assert {m.traceparent for m in webhooks(assigned)} == {given}
    assert {m.traceparent for m in webhooks(continued)} == {CLIENT_TRACEPARENT}, "a caller's trace is continued"


class Collector:
    """A minimal OTLP/HTTP trace receiver: keeps every span it is sent, with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict] = []

    async def receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        )
        body = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in body.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append({
                        "service": resource.get("service.name"), "name": s.name, "kind": s.kind,
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex() or None,
                        "attributes": {a.key: a.value.string_value or a.value.int_value for a in s.attributes},
                    })
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    def find(self, kind: int, **attributes) -> list[dict]:
        return [s for s in self.spans if s["kind"] == kind and all(s["attributes"].get(k) == v for k, v in attributes.items())]


async def test_with_tracing_on_one_alert_is_one_trace_through_every_service(settings, tmp_path):
    """The four services exporting to an OTLP receiver: request → Kafka hops → webhooks, one span tree."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as Otlp

    own = settings.model_copy(update={
        "topic_prefix": f"{settings.topic_prefix}otel.", "pg_database": f"{settings.pg_database}_otel",
        "network_dir": network_dir(tmp_path / "network", port(195)),
    })
    await db.bootstrap(own)
    for service in db.SERVICES:
        await db.migrate(own, service)
    await topics.create_topics(own)
    collector = Collector()
    receiver = web.AppRunner(web.Application(), access_log=None)
    receiver.app.router.add_post("/v1/traces", collector.receive)
    await receiver.setup()
    await web.TCPSite(receiver, "127.0.0.1", port(190)).start()
    directory = load_network(own.network_dir).directory
    await in_session(own, "notifier", lambda s: notifier_repo.ensure_endpoints(s, {e.id for e in directory.endpoints}))
    found = await in_session(own, "notifier", notifier_repo.secrets_by_endpoint)
    box = Inbox(secrets=lambda: found)
    inbox_runner = await serve(box, port(195))
    ports = {name: port(191 + n) for n, name in enumerate(db.SERVICES)}
    env = {
        "BLONET_TOPIC_PREFIX": own.topic_prefix, "BLONET_PG_DATABASE": own.pg_database,
        "BLONET_NETWORK_DIR": str(own.network_dir), "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['gateway']}",
        **{f"BLONET_{name.upper()}_PORT": str(p) for name, p in ports.items()},
        "BLONET_OTLP_ENDPOINT": f"http://127.0.0.1:{port(190)}", "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    procs = {name: start_service(name, tmp_path, env, "-otel") for name in db.SERVICES}
    try:
        for name, proc in procs.items():
            await wait_ready(ports[name], proc)
        key = await make_key(own, "kg-sbs", Role.SUBMIT)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.post(f"http://127.0.0.1:{ports['gateway']}/v1/alerts", json=SCENARIO) as r:
                assert r.status == 202, await r.text()
                alert_id = (await r.json())["id"]
        delivered_to = own.topic(topics.DELIVERIES_STATUS.name)
        n = len(EXPECTED_RECIPIENTS)
        for _ in range(300):  # every webhook sent, and its status event handled by the gateway
            if len(collector.find(Otlp.SPAN_KIND_CLIENT, **{"blonet.alert_id": alert_id})) == n and len([
                s for s in collector.find(Otlp.SPAN_KIND_CONSUMER, **{"blonet.alert_id": alert_id})
                if s["service"] == "blonet-gateway" and s["attributes"]["messaging.destination.name"] == delivered_to
            ]) == n:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"spans missing; got {[(s['service'], s['name']) for s in collector.spans]}")
    finally:
        await asyncio.gather(*(asyncio.to_thread(proc.stop) for proc in procs.values()))  # stopping flushes their spans
        await inbox_runner.cleanup()
        await receiver.cleanup()
        await db.drop_database(own)

    by_id = {s["span_id"]: s for s in collector.spans}
    (request,) = [s for s in collector.spans if s["kind"] == Otlp.SPAN_KIND_SERVER and s["name"] == "POST /v1/alerts"]
    assert request["service"] == "blonet-gateway" and request["parent"] is None
    assert not [s for s in collector.spans if s["name"].endswith(("/readyz", "/healthz", "/metrics"))]
    mine = [s for s in collector.spans if s["trace_id"] == request["trace_id"]]
    assert {s["service"] for s in mine} == {"blonet-gateway", "blonet-routing", "blonet-notifier", "blonet-audit"}

    def parent(span: dict) -> dict:
        return by_id[span["parent"]]

    (submit,) = [s for s in mine if s["kind"] == Otlp.SPAN_KIND_PRODUCER and s["service"] == "blonet-gateway"]
    assert parent(submit) is request and submit["attributes"]["blonet.alert_id"] == alert_id
    (route,) = [s for s in mine if s["kind"] == Otlp.SPAN_KIND_CONSUMER and s["service"] == "blonet-routing"]
    assert parent(route) is submit
    decided = [s for s in mine if s["kind"] == Otlp.SPAN_KIND_PRODUCER and s["service"] == "blonet-routing"]
    assert len(decided) == 1 + n and all(parent(s) is route for s in decided)
    intake = [s for s in mine if s["kind"] == Otlp.SPAN_KIND_CONSUMER and s["service"] == "blonet-notifier"
              and s["attributes"]["messaging.destination.name"] == own.topic(topics.DELIVERIES_REQUESTED.name)]
    assert len(intake) == n and all(parent(s) in decided for s in intake)
    attempts = [s for s in mine if s["kind"] == Otlp.SPAN_KIND_CLIENT]
    assert len(attempts) == n and all(parent(s) in intake for s in attempts)
    assert all(s["attributes"]["http.response.status_code"] == 200 for s in attempts)
    # Each webhook's traceparent is its attempt's span.
    sent = {tuple(m.traceparent.split("-")[1:3]) for inbox in box.received.values() for m in inbox
            if m.body["alert_id"] == alert_id}
    assert sent == {(s["trace_id"], s["span_id"]) for s in attempts}
