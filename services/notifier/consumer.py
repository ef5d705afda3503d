"""The notifier's Kafka handler: store each delivery request durably, then wake the workers."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiokafka.structs import ConsumerRecord

from services.notifier import repository
from services.notifier.delivery import Deliverer
from shared.events import DeliveryRequested, Envelope
from shared.observability import EVENTS_HANDLED
from shared.service import Runtime
from shared.settings import Settings

log = logging.getLogger(__name__)


def url_allowed(settings: Settings, url: str) -> bool:
    """Return whether the notifier may post to `url`: https, or plain http to loopback in development."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    return settings.allow_insecure_webhooks and loopback


class DeliveryIntake:
    def __init__(self, runtime: Runtime, deliverer: Deliverer) -> None:
        self.rt, self.deliverer = runtime, deliverer

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        rows = []
        for record in records:
            env = Envelope.from_bytes(record.value)
            req = env.payload_as(DeliveryRequested)
            refused = not url_allowed(self.rt.settings, req.url)
            if refused:  # kept as a dead letter, visible to operators, rather than dropped
                log.error("refusing insecure endpoint URL", extra={"endpoint": req.endpoint, "url": req.url})
            rows.append({
                "state": "failed" if refused else "pending",
                "delivery_id": req.delivery_id, "request_event_id": env.event_id, "alert_id": env.alert_id,
                "thread_id": env.thread_id, "endpoint": req.endpoint, "agency": req.agency, "url": req.url,
                "body": req.body, "traceparent": env.traceparent,
            })
            EVENTS_HANDLED.labels("notifier", env.type).inc()
        async with self.rt.sessions() as session:
            await repository.ensure_endpoints(session, {r["endpoint"] for r in rows})
            await repository.add_deliveries(session, rows)
            await session.commit()
        self.deliverer.wake.set()
