"""The notifier's Kafka handler: hand each delivery request of a poll to its endpoint's lane.

One read per poll: which of the poll's deliveries already have a row (done or parked before a
crash or a rebalance: not sent again from here) and the endpoints' epoch (reload secrets when it
moved). The handler returns at once; offsets move as deliveries finish (dispatch.py).
A request the notifier cannot honour (an endpoint it holds no secret for, a URL it may not
post to) is stored as a dead letter with the reason, and announced, never dropped silently.
A record that is no delivery request at all goes to notifier.deadletter (shared/kafka.py).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from urllib.parse import urlsplit

from aiokafka.structs import ConsumerRecord, TopicPartition

from services.notifier import channels, escalation, repository
from services.notifier.dispatch import Dispatcher, Item
from services.notifier.models import deliveries
from shared.events import AlertAcknowledged, DeliveryRequested, Envelope, P, ViewProfile
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


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def unstorable(row: dict) -> str | None:
    """Return why PostgreSQL would refuse a delivery row (a NUL, a string past its column), or None.

    Checked before a poll's requests are taken: the group commit runs after the handler, where a
    refused row could no longer be split out to the dead-letter topic.
    """
    for column in deliveries.columns:
        value, limit = row.get(column.name), getattr(column.type, "length", None)
        if _has_nul(value):
            return f"{column.name} holds a NUL character"
        if limit and isinstance(value, str) and len(value) > limit:
            return f"{column.name} is longer than {limit} characters"
    return None


class DeliveryIntake:
    def __init__(self, runtime: Runtime, dispatcher: Dispatcher) -> None:
        self.rt, self.dispatcher = runtime, dispatcher

    def _watch(self, req: DeliveryRequested, alert_id, agencies: dict, now: datetime) -> dict | None:
        """Return the acknowledgement to wait for: a full view of an alert whose urgency has a deadline."""
        agency = agencies.get(req.agency)
        if req.profile is not ViewProfile.FULL or (agency and agency.observer):
            return None
        deadline = escalation.ack_deadline(
            urgency=escalation.urgency_of(req.body), requested_at=now,
            agency_minutes=agency.ack_deadline_minutes if agency else {},
            override_seconds=self.rt.settings.ack_deadlines_seconds,
        )
        return deadline and {"alert_id": alert_id, "agency": req.agency, "delivery_id": req.delivery_id, "deadline": deadline}

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        parsed = decoded(records, DeliveryRequested)  # a bad record fails here, before anything is taken
        if not parsed:
            return
        async with self.rt.engine.connect() as conn:
            epoch, known = await repository.seen(conn, [req.delivery_id for _, req in parsed])
        d = self.dispatcher
        await d.refresh(epoch)
        agencies = {a.id: a for a in escalation.directory(self.rt.settings.network_dir).agencies}
        now = datetime.now(timezone.utc)
        taken, registered = [], set(d.endpoints)
        for record, (env, req) in zip(records, parsed):
            if req.delivery_id in known or d.holds(req.delivery_id):
                continue  # already done, parked or in hand: its offset moves with the poll's
            reason = refusal(self.rt.settings, req, registered)
            if reason:
                log.error("dead-lettering delivery request", extra={"endpoint": req.endpoint, "reason": reason})
            row = {
                "state": "failed" if reason else "pending", "reason": reason, "attempts": 0, "schedule_start": 0,
                "delivery_id": req.delivery_id, "request_event_id": env.event_id, "alert_id": env.alert_id,
                "thread_id": env.thread_id, "endpoint": req.endpoint, "agency": req.agency, "url": target(req),
                "body": req.body, "traceparent": tracing.traceparent_for(env), "format": channels.SIGNED_CAP if req.sign_cap and req.format == "cap" else req.format[:8],
                "language": req.language, "due_at": now, "created_at": now, "finished_at": now if reason else None,
            }
            problem = unstorable(row)
            if problem:  # fails the poll before anything is taken: the consumer dead-letters this record alone
                raise ValueError(f"delivery request cannot be stored: {problem}")
            watch = None if reason else self._watch(req, env.alert_id, agencies, now)
            taken.append((Item(row=row, tp=TopicPartition(record.topic, record.partition), offset=record.offset, watch=watch),
                          bool(reason)))
        for item, refused in taken:
            d.accept(item, refused=refused)
        EVENTS_HANDLED.labels("notifier", parsed[0][0].type).inc(len(parsed))  # all of one type (decoded)
        await d.room()


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
