"""Routing's Kafka handler: alert.submitted → decision → alert.routed + delivery.requested."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from services.routing import repository
from services.routing.directory import Directory, RuleSet
from services.routing.policy import decide, view
from shared import topics
from shared.events import AlertRouted, AlertSubmitted, DeliveryRequested, Envelope
from shared.ids import derived_id
from shared.kafka import send
from shared.observability import EVENTS_HANDLED, log_context
from shared.service import Runtime

log = logging.getLogger(__name__)


class RoutingHandler:
    def __init__(self, runtime: Runtime, directory: Directory, rules: RuleSet, ruleset_hash: str) -> None:
        self.rt, self.directory, self.rules, self.ruleset_hash = runtime, directory, rules, ruleset_hash

    def route(self, cause: Envelope) -> tuple[AlertRouted, list[tuple[str, str, Envelope]]]:
        """Decide for one submitted alert; return it with the (topic, key, envelope) triples to produce."""
        alert = cause.payload_as(AlertSubmitted).alert
        # Decide at the time the alert was accepted, so a replay reaches the same decision.
        decision = decide(alert, self.directory, self.rules, self.ruleset_hash, now=cause.occurred_at)
        node, aid, tid = self.rt.settings.node_id, cause.alert_id, cause.thread_id
        routed = Envelope.wrap(decision, origin_node=node, alert_id=aid, thread_id=tid, cause=cause,
                               event_id=derived_id(cause.event_id, "routed"))
        out = [(topics.ALERTS_ROUTED.name, str(tid), routed)]
        for r in decision.recipients:
            endpoint = self.directory.endpoint(r.endpoint)
            request = DeliveryRequested(
                delivery_id=derived_id(cause.event_id, "delivery", r.endpoint), endpoint=r.endpoint,
                agency=r.agency, unit=r.unit, channel=endpoint.channel.value, url=endpoint.url, email=endpoint.email,
                format=endpoint.format, language=endpoint.language, profile=r.profile,
                body=view(alert, r, alert_id=aid, thread_id=tid, sent_at=cause.occurred_at),
            )
            env = Envelope.wrap(request, origin_node=node, alert_id=aid, thread_id=tid, cause=routed,
                                event_id=derived_id(cause.event_id, "delivery-requested", r.endpoint))
            out.append((topics.DELIVERIES_REQUESTED.name, r.endpoint, env))
        return decision, out

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        outputs = []
        async with self.rt.sessions() as session:
            for record in records:
                cause = Envelope.from_bytes(record.value)
                log_context.set({"alert_id": str(cause.alert_id), "event_id": str(cause.event_id)})
                decision, produced = self.route(cause)
                routed = produced[0][2]
                await repository.save_decision(
                    session, alert_id=cause.alert_id, thread_id=cause.thread_id, event_id=routed.event_id,
                    decision=decision, decided_at=routed.occurred_at,
                )
                outputs += produced
                EVENTS_HANDLED.labels("routing", cause.type).inc()
            await session.commit()
        # Produce after the decision is stored; the caller commits offsets only after every ack.
        futures = [await send(self.rt.producer, self.rt.settings.topic(t), k, e) for t, k, e in outputs]
        await asyncio.gather(*futures)
