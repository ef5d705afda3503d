"""The notifier's Kafka handler: store each delivery request durably, then wake the workers.

A request the notifier cannot honour (an endpoint it holds no secret for, a URL it may not
post to) is stored as a dead letter with the reason, and announced, never dropped silently.
A record that is no delivery request at all goes to notifier.deadletter (shared/kafka.py).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aiokafka.structs import ConsumerRecord

from services.notifier import channels, escalation, repository
from services.notifier.delivery import Deliverer, count_outcome
from services.notifier.service import emit_status
from shared.events import AlertAcknowledged, DeliveryRequested, DeliveryState, Envelope, P, ViewProfile
from shared import tracing
from shared.observability import EVENTS_HANDLED
from shared.service import Runtime
from shared.settings import Settings

log = logging.getLogger(__name__)


def url_allowed(settings: Settings, url: str) -> bool:
    """Return whether the notifier may send to `url`: https, mailto, or plain http to loopback in development."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme == "mailto" and "@" in parts.path and not parts.netloc:
        return True
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    return settings.allow_insecure_webhooks and loopback


def target(req: DeliveryRequested) -> str:
    """Return where a request goes as one URL: the webhook URL, or mailto: for the e-mail channel."""
    if req.channel == "email":
        return f"mailto:{req.email or ''}"
    return req.url or ""


def refusal(settings: Settings, req: DeliveryRequested, known: set[str]) -> str | None:
    """Return why a delivery request cannot be sent at all, or None if it can."""
    if req.endpoint not in known:
        return f"unknown endpoint {req.endpoint}: the notifier holds no secret for it (blonet endpoints sync)"
    if req.channel not in ("webhook", "email"):
        return f"unknown channel {req.channel!r}"
    if req.format not in ("json", "cap"):
        return f"unknown format {req.format!r}"
    if req.sign_cap and channels.node_key(settings) is None:
        return "the endpoint asks for signed CAP, but this node has no CAP signing key (BLONET_CAP_SIGNING_KEY_FILE)"
    if not url_allowed(settings, target(req)):
        return f"refused address {target(req)!r}: https only (plain http to loopback in development), or mailto"
    return None


def decoded(records: Sequence[ConsumerRecord], model: type[P]) -> list[tuple[Envelope, P]]:
    """Return each record as a `model` event. One that is not (bad bytes, another event) fails the
    batch with a ValueError: the consumer splits it out to the dead-letter topic (shared/kafka.py)."""
    found = []
    for record in records:
        env = Envelope.from_bytes(record.value)
        found.append((env, env.payload_as(model)))
    return found


class DeliveryIntake:
    def __init__(self, runtime: Runtime, deliverer: Deliverer) -> None:
        self.rt, self.deliverer = runtime, deliverer

    def _watches(self, reqs: list[DeliveryRequested], rows: list[dict]) -> list[dict]:
        """Return the acknowledgements to wait for: full views of alerts whose urgency has a deadline."""
        agencies = {a.id: a for a in escalation.directory(self.rt.settings.network_dir).agencies}
        now = datetime.now(timezone.utc)
        watches = []
        for req, row in zip(reqs, rows):
            agency = agencies.get(req.agency)
            if row["state"] != "pending" or req.profile is not ViewProfile.FULL or (agency and agency.observer):
                continue
            deadline = escalation.ack_deadline(
                urgency=escalation.urgency_of(req.body), requested_at=now,
                agency_minutes=agency.ack_deadline_minutes if agency else {},
                override_seconds=self.rt.settings.ack_deadlines_seconds,
            )
            if deadline:
                watches.append({"alert_id": row["alert_id"], "agency": req.agency, "delivery_id": req.delivery_id,
                                "deadline": deadline})
        return watches

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        parsed = decoded(records, DeliveryRequested)
        envs, reqs = [env for env, _ in parsed], [req for _, req in parsed]
        if not reqs:
            return
        async with self.rt.sessions() as session:
            known = await repository.known_endpoints(session, {r.endpoint for r in reqs})
            rows = []
            for env, req in zip(envs, reqs):
                reason = refusal(self.rt.settings, req, known)
                if reason:
                    log.error("dead-lettering delivery request", extra={"endpoint": req.endpoint, "reason": reason})
                rows.append({
                    "state": "failed" if reason else "pending", "reason": reason,
                    "delivery_id": req.delivery_id, "request_event_id": env.event_id, "alert_id": env.alert_id,
                    "thread_id": env.thread_id, "endpoint": req.endpoint, "agency": req.agency, "url": target(req),
                    "body": req.body, "traceparent": tracing.traceparent_for(env), "format": channels.SIGNED_CAP if req.sign_cap and req.format == "cap" else req.format[:8], "language": req.language,
                })
                EVENTS_HANDLED.labels("notifier", env.type).inc()
            new = await repository.add_deliveries(session, rows)
            await repository.watch_acks(session, self._watches(reqs, rows))
            refused = [row for row in rows if row["reason"] and row["delivery_id"] in new]
            for row in refused:
                await emit_status(session, self.rt.settings, row=row, state=DeliveryState.FAILED, attempt=0, error=row["reason"])
            await session.commit()
        for row in refused:
            count_outcome(row["endpoint"], DeliveryState.FAILED, "refused")
        self.deliverer.wake.set()


class AckIntake:
    """Record recipients' acknowledgements, so their escalation deadlines stop."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        acks = {
            (env.alert_id, ack.agency): {"alert_id": env.alert_id, "agency": ack.agency}
            for env, ack in decoded(records, AlertAcknowledged) if env.alert_id
        }
        async with self.rt.sessions() as session:
            await repository.record_acks(session, list(acks.values()))
            await session.commit()
