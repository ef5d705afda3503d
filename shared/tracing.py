"""Distributed traces: OpenTelemetry spans from the HTTP request through every Kafka hop to the webhook.

W3C trace context (`traceparent`) always travels with an alert: in each envelope, in each Kafka
record's headers, in the notifier's deliveries table and on each webhook. Spans are made only when
tracing is on — `configure()` with `BLONET_OTLP_ENDPOINT` set, or `use(provider)` in tests. Off (the
default) nothing here creates a span or an id: the context an event carries is passed on unchanged,
so the trace id the gateway gives an alert is the one every hop and every webhook carries.

On, every service records (see docs/tracing.md):
  SERVER   one per HTTP request (`TraceMiddleware`; not /metrics, /healthz, /readyz)
  PRODUCER one per event published (`shared.kafka.send`); the envelope and the Kafka header carry it
  CONSUMER one per record an `EventConsumer` handles, child of the record's producer span; an event
           wrapped with that record's envelope as its cause is the consumer span's child
  CLIENT   one per webhook or e-mail attempt (the notifier), sent as the webhook's traceparent
"""
from __future__ import annotations

import contextvars
import logging
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import failures

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
    from opentelemetry.sdk.trace import TracerProvider

    from shared.events import Envelope
    from shared.settings import Settings

log = logging.getLogger(__name__)
PROPAGATOR = TraceContextTextMapPropagator()
SKIP_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})  # probes and scrapes: no spans
# FastAPI (0.16x) makes its own request spans whenever a global provider is set; TraceMiddleware
# makes ours, so FastAPI's are turned off (else every request would have two SERVER spans).
FASTAPI_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
INSTRUMENTATION = "blonet"

_tracer: trace.Tracer | None = None  # None: tracing is off
_owned: TracerProvider | None = None  # the provider configure() built, flushed by shutdown()
# The consumer spans of the records being handled, by event id: an event caused by one of them is its child.
_handling: contextvars.ContextVar[Mapping[str, Span]] = contextvars.ContextVar("blonet_handling", default={})


# --- switching it on ----------------------------------------------------------------------------

def enabled() -> bool:
    return _tracer is not None


def use(provider: trace.TracerProvider | None) -> None:
    """Record spans with `provider` from now on; None turns tracing off (tests use this)."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)


def build_provider(service: str, settings: Settings) -> TracerProvider:
    """Return an SDK provider exporting `blonet-<service>` spans in batches over OTLP/HTTP."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({
        "service.name": f"blonet-{service}",
        "service.namespace": "blonet",
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
        "deployment.environment.name": settings.environment,
        "blonet.node_id": settings.node_id,
    })
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, else parent-based always-on
    endpoint = f"{settings.otlp_endpoint.rstrip('/')}/v1/traces"
    # A short export timeout: with the collector gone, a stopping service waits seconds, not ten.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=3)))
    return provider


def configure(service: str, settings: Settings) -> None:
    """Turn tracing on for this process when `settings.otlp_endpoint` is set; otherwise leave it as it is.

    Called by `Runtime.start()`; a second call (another start in the same process) changes nothing.
    """
    global _owned
    if not settings.otlp_endpoint or _owned is not None:
        return
    _owned = build_provider(service, settings)
    trace.set_tracer_provider(_owned)  # libraries using the global API join the same traces
    use(_owned)
    log.info("tracing on", extra={"otlp_endpoint": settings.otlp_endpoint})


def shutdown() -> None:
    """Export the spans still buffered (at stop); a no-op when configure() built nothing."""
    global _owned
    if _owned is not None:
        try:
            _owned.shutdown()
        except Exception:  # a collector that went away must not fail the shutdown
            log.warning("could not flush the last spans", exc_info=True)
        _owned = None
        use(None)


# --- carrying the context -----------------------------------------------------------------------

class _KafkaHeaders(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]] | None, key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier or () if k == key and v is not None]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes]] | None) -> list[str]:
        return [k for k, _ in carrier or ()]


class _AsgiHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode()
        found = [v.decode("latin-1") for k, v in carrier if k == name]
        return found or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


KAFKA_HEADERS, ASGI_HEADERS = _KafkaHeaders(), _AsgiHeaders()


def inject_headers(headers: list[tuple[str, bytes]], context: Context | None = None) -> list[tuple[str, bytes]]:
    """Add the W3C headers of `context` (default: the current one) to a Kafka header list; return it."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    headers += [(k, v.encode()) for k, v in carrier.items()]
    return headers


def extract_headers(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """Return the context carried by a Kafka record's headers (empty when it carries none)."""
    return PROPAGATOR.extract(headers or (), getter=KAFKA_HEADERS)


def traceparent_of(span_or_context: Span | Context | None) -> str | None:
    """Return the W3C traceparent of a span (or of a context's span), None if it has no valid one."""
    if span_or_context is None:
        return None
    context = trace.set_span_in_context(span_or_context) if isinstance(span_or_context, Span) else span_or_context
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=context)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context:
    """Return the context a stored traceparent (an envelope's, a delivery's) stands for."""
    return PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})


def trace_id_of(traceparent: str | None) -> str | None:
    """Return the 32-hex trace id of a well-formed traceparent."""
    span = trace.get_current_span(context_of(traceparent))
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def current_traceparent() -> str | None:
    """Return the traceparent of the current span when tracing is on and there is one."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    return traceparent_of(span) if span.get_span_context().is_valid else None


def traceparent_for(cause: Envelope | None = None) -> str | None:
    """Return the trace context an event caused by `cause` (or by the current work) must carry.

    On: the consumer span handling `cause`, else the current span. Otherwise (off, or nothing to
    hang it on): the cause's own traceparent, unchanged.
    """
    if _tracer is not None:
        if cause is not None:
            span = _handling.get().get(str(cause.event_id))
            if span is not None:
                return traceparent_of(span)
        found = current_traceparent()
        if found:
            return found
    return cause.traceparent if cause is not None else None


# --- spans --------------------------------------------------------------------------------------

def _note(span: Span, exc: BaseException, **attributes: Any) -> None:
    """Record an exception event whose message quotes no data (a pydantic message would quote the alert)."""
    span.add_event("exception", {"exception.type": failures.error_class(exc), "exception.message": failures.describe(exc),
                                 **attributes})


def _error(span: Span, exc: BaseException | None = None, description: str | None = None) -> None:
    if exc is not None:
        _note(span, exc)
    span.set_status(Status(StatusCode.ERROR, description or (failures.describe(exc) if exc else None)))


def start_producer(topic: str, key: str, envelope: Envelope) -> Span | None:
    """Start the PRODUCER span of one event (None when off); its parent is the envelope's context.

    The caller ends it with `end_producer` once the broker has acknowledged the record.
    """
    if _tracer is None:
        return None
    parent = context_of(envelope.traceparent) if envelope.traceparent else None  # None: the current context
    attributes = {
        "messaging.system": "kafka", "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.destination.name": topic, "messaging.kafka.message.key": key,
        "messaging.message.id": str(envelope.event_id), "blonet.event_type": envelope.type.value,
    }
    if envelope.alert_id is not None:
        attributes["blonet.alert_id"] = str(envelope.alert_id)
    return _tracer.start_span(f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes)


def end_producer(span: Span, ack: Any = None, exc: BaseException | None = None) -> None:
    """End a PRODUCER span with the broker's answer: a future of RecordMetadata, or the error."""
    if ack is not None:
        if ack.cancelled():
            exc = exc or Exception("cancelled before the broker acknowledged")
        elif ack.exception() is not None:
            exc = ack.exception()
        else:
            meta = ack.result()
            span.set_attribute("messaging.destination.partition.id", str(meta.partition))
            span.set_attribute("messaging.kafka.offset", meta.offset)
    if exc is not None:
        _error(span, exc)
    span.end()


class Batch:
    """The CONSUMER spans of one batch being handled, one per record (empty when tracing is off)."""

    def __init__(self, spans: dict[tuple[str, int, int], Span]) -> None:
        self.spans = spans  # by (topic, partition, offset): a batch spans partitions

    @staticmethod
    def key(record: ConsumerRecord) -> tuple[str, int, int]:
        return record.topic, record.partition, record.offset

    def failed(self, exc: BaseException, record: ConsumerRecord | None = None) -> None:
        """Mark a rejected record's span (or, for a batch to be retried, note the error on every span)."""
        if record is not None:
            span = self.spans.get(self.key(record))
            if span is not None:
                _error(span, exc, "record dead-lettered")
        else:
            for span in self.spans.values():
                _note(span, exc, **{"blonet.retrying": True})

    @contextmanager
    def current(self, record: ConsumerRecord) -> Iterator[None]:
        """Make `record`'s consumer span the current span."""
        span = self.spans.get(self.key(record))
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield


OFF = Batch({})  # tracing off: no spans


@contextmanager
def consuming(group: str, records: Sequence[ConsumerRecord]) -> Iterator[Batch]:
    """Start a CONSUMER span per record (its parent: the record's headers), for the handling of the batch.

    Meanwhile, `traceparent_for(envelope)` of any of these records' envelopes is its consumer span,
    and with a single record its span is also the current one.
    """
    if _tracer is None or not records:
        yield OFF
        return
    spans: dict[tuple[str, int, int], Span] = {}
    by_event: dict[str, Span] = {}
    for record in records:
        headers = record.headers or ()
        attributes = {
            "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.destination.name": record.topic, "messaging.consumer.group.name": group,
            "messaging.destination.partition.id": str(record.partition), "messaging.kafka.offset": record.offset,
            "messaging.batch.message_count": len(records),
        }
        extra = {k: v.decode("utf-8", "replace") for k, v in headers if k in ("event-id", "event-type", "alert-id") and v}
        if "event-id" in extra:
            attributes["messaging.message.id"] = extra["event-id"]
        if "event-type" in extra:
            attributes["blonet.event_type"] = extra["event-type"]
        if "alert-id" in extra:
            attributes["blonet.alert_id"] = extra["alert-id"]
        span = _tracer.start_span(f"process {record.topic}", context=extract_headers(headers), kind=SpanKind.CONSUMER,
                                  attributes=attributes)
        spans[Batch.key(record)] = span
        if "event-id" in extra:
            by_event[extra["event-id"]] = span
    token = _handling.set({**_handling.get(), **by_event})
    batch = Batch(spans)
    try:
        if len(records) == 1:
            with batch.current(records[0]):
                yield batch
        else:
            yield batch
    finally:
        _handling.reset(token)
        for span in spans.values():
            span.end()


@contextmanager
def client_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[Span | None]:
    """Run an outgoing call (a webhook, an e-mail) in a CLIENT span whose parent is `traceparent`.

    Yields None when tracing is off: the caller sends the stored traceparent unchanged.
    """
    if _tracer is None:
        yield None
        return
    parent = context_of(traceparent) if traceparent else None
    span = _tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=dict(attributes))
    with trace.use_span(span, end_on_exit=True):
        yield span


def attempt_attributes(row: Mapping[str, Any], email: bool) -> dict[str, Any]:
    """Return the attributes of a delivery attempt's CLIENT span (the notifier's deliveries row)."""
    if _tracer is None:
        return {}
    attributes = {
        "blonet.delivery_id": str(row["delivery_id"]), "blonet.alert_id": str(row["alert_id"]),
        "blonet.endpoint": row["endpoint"], "blonet.attempt": int(row.get("attempts") or 0) + 1,
        "blonet.channel": "email" if email else "webhook",
    }
    if not email:  # the host only: a webhook URL's path or query may hold a recipient's token
        url = urlsplit(row["url"])
        attributes.update({"http.request.method": "POST", "server.address": url.hostname or ""})
        try:
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:  # a malformed port: the attempt itself will say so
            pass
    return attributes


def attempt_outcome(span: Span | None, status: int | None, error: str | None, email: bool) -> None:
    """Note what an attempt observed; anything but a 2xx (or an accepted e-mail) marks the span an error."""
    if span is None:
        return
    if status is not None and not email:
        span.set_attribute("http.response.status_code", status)
    if error is not None or status is None or not (email or 200 <= status < 300):
        span.set_status(Status(StatusCode.ERROR, error or (f"HTTP {status}" if status else "no answer")))


# --- HTTP ---------------------------------------------------------------------------------------

class TraceMiddleware:
    """A SERVER span per HTTP request, child of the caller's `traceparent` header when it sends one.

    Named `METHOD /route/{template}` once the router has matched; probes and /metrics get none.
    """

    def __init__(self, app, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if _tracer is None or scope["type"] != "http" or scope["path"] in SKIP_PATHS:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        span = _tracer.start_span(method, context=PROPAGATOR.extract(scope.get("headers") or [], getter=ASGI_HEADERS),
                                  kind=SpanKind.SERVER, attributes={
                                      "http.request.method": method, "url.path": scope["path"],
                                      "url.scheme": scope.get("scheme", "http"),
                                      "network.protocol.version": scope.get("http_version", "1.1"),
                                  })

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        with trace.use_span(span, end_on_exit=True):
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
