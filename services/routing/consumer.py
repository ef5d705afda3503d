"""Routing's Kafka handler: alert.submitted / alert.forwarded → decision → alert.routed + delivery.requested."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from aiokafka.structs import ConsumerRecord
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing import repository
from services.routing.compiled import Compiled
from services.routing.policy import Thread, decide, decide_forward, view
from services.routing.state import ActiveNetwork
from shared import topics
from shared.alerts import Alert
from shared.events import AlertForwarded, AlertRouted, AlertSubmitted, DeliveryRequested, Envelope, EventType, Recipient
from shared.ids import derived_id
from shared.kafka import send
from shared.metrics import ROUTING_DECISIONS, ROUTING_DENIALS, ROUTING_RECIPIENTS
from shared.observability import EVENTS_HANDLED, log_context
from shared.service import Runtime

log = logging.getLogger(__name__)


async def load_thread(session: AsyncSession, thread_id, alert_id=None) -> Thread:
    """Rebuild what a thread did from stored decisions: its alert (or `alert_id`'s) and every recipient."""
    rows = await repository.thread_rows(session, thread_id)
    alerts = {r["alert_id"]: r["alert"] for r in rows if r["alert"]}
    original = alerts.get(alert_id or thread_id)
    recipients: dict[str, Recipient] = {}
    for row in rows:
        for r in row["decision"]["recipients"]:
            recipients.setdefault(r["endpoint"], Recipient.model_validate(r))
    return Thread(Alert.model_validate(original) if original else None, tuple(recipients.values()))


def count_decisions(routed: Iterable[Envelope]) -> None:
    """Count decisions by kind and outcome, their recipients by profile and their denials by code."""
    for env in routed:
        decision = env.payload
        ROUTING_DECISIONS.labels(decision["kind"], "recipients" if decision["recipients"] else "no_recipients").inc()
        for recipient in decision["recipients"]:
            ROUTING_RECIPIENTS.labels(recipient["profile"]).inc()
        for denial in decision["denied"]:
            ROUTING_DENIALS.labels(denial["code"]).inc()


class RoutingHandler:
    def __init__(self, runtime: Runtime, active: ActiveNetwork) -> None:
        self.rt, self.active = runtime, active

    def outputs(self, cause: Envelope, decision: AlertRouted, alert: Alert, net: Compiled,
                forwarded_by: dict | None = None) -> list[tuple[str, str, Envelope]]:
        """Return the (topic, key, envelope) triples a decision produces; ids derive from the cause."""
        node, aid, tid = self.rt.settings.node_id, cause.alert_id, cause.thread_id
        routed = Envelope.wrap(decision, origin_node=node, alert_id=aid, thread_id=tid, cause=cause,
                               event_id=derived_id(cause.event_id, "routed"))
        out = [(topics.ALERTS_ROUTED.name, str(tid), routed)]
        for r in decision.recipients:
            endpoint = net.endpoints[r.endpoint]
            request = DeliveryRequested(
                delivery_id=derived_id(cause.event_id, "delivery", r.endpoint), endpoint=r.endpoint,
                agency=r.agency, unit=r.unit, channel=endpoint.channel.value, url=endpoint.url, email=endpoint.email,
                format=endpoint.format, language=endpoint.language, profile=r.profile, sign_cap=endpoint.sign_cap,
                body=view(alert, r, alert_id=aid, thread_id=tid, sent_at=cause.occurred_at, forwarded_by=forwarded_by),
            )
            env = Envelope.wrap(request, origin_node=node, alert_id=aid, thread_id=tid, cause=routed,
                                event_id=derived_id(cause.event_id, "delivery-requested", r.endpoint))
            out.append((topics.DELIVERIES_REQUESTED.name, r.endpoint, env))
        return out

    async def route(self, session: AsyncSession, cause: Envelope) -> list[tuple[str, str, Envelope]]:
        net = self.active.current
        # Decide at the time the event was accepted, so a replay reaches the same decision.
        now = cause.occurred_at
        if cause.type is EventType.ALERT_FORWARDED:
            forward = cause.payload_as(AlertForwarded)
            thread = await load_thread(session, cause.thread_id, cause.alert_id)
            decision = decide_forward(forward, thread, net, now)
            alert, stored = thread.original, None
            by = {"agency": forward.agency, "unit": forward.unit, "comment": forward.comment}
        else:
            submitted = cause.payload_as(AlertSubmitted)
            alert = submitted.alert
            thread = await load_thread(session, cause.thread_id) if cause.thread_id != cause.alert_id else Thread()
            decision = decide(alert, thread, net, now, unresolved=submitted.unresolved_references)
            stored, by = alert.model_dump(mode="json"), None
        produced = self.outputs(cause, decision, alert, net, by)  # no alert → no recipients, only the decision
        await repository.save_decision(
            session, event_id=produced[0][2].event_id, alert_id=cause.alert_id, thread_id=cause.thread_id,
            alert=stored, decision=decision, decided_at=now,
        )
        return produced

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        outputs = []
        async with self.rt.sessions() as session:
            for record in records:
                cause = Envelope.from_bytes(record.value)
                log_context.set({"alert_id": str(cause.alert_id), "event_id": str(cause.event_id)})
                outputs += await self.route(session, cause)
                EVENTS_HANDLED.labels("routing", cause.type).inc()
            await session.commit()
        # Produce after the decisions are stored; the caller commits offsets only after every ack.
        futures = [await send(self.rt.producer, self.rt.settings.topic(t), k, e) for t, k, e in outputs]
        await asyncio.gather(*futures)
        # Counted only now, so a batch that failed and is retried is not counted twice.
        count_decisions(e for _, _, e in outputs if e.type is EventType.ALERT_ROUTED)
