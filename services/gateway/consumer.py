"""The gateway's status view, fed by the submitted, routed, delivery and acknowledgement topics."""
from __future__ import annotations

from collections.abc import Sequence

from aiokafka.structs import ConsumerRecord

from services.gateway import repository
from shared import topics
from shared.events import (
    AlertAcknowledged, AlertForwarded, AlertRouted, AlertSubmitted, DeliveryRequested, DeliveryStatus, Envelope, EventType,
    OperatorAction,
)
from shared.observability import EVENTS_HANDLED
from shared.tracing import trace_id_of
from shared.service import Runtime

TOPICS = [topics.ALERTS_SUBMITTED.name, topics.ALERTS_ROUTED.name, topics.DELIVERIES_REQUESTED.name,
          topics.DELIVERIES_STATUS.name, topics.ALERTS_ACKNOWLEDGED.name, topics.OPERATIONS_ACTIONS.name]


class StatusView:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        changed = set()
        async with self.rt.sessions() as session:
            for record in records:
                env = Envelope.from_bytes(record.value)
                if env.alert_id is not None:
                    changed.add(env.alert_id)
                if env.type is EventType.ALERT_SUBMITTED:
                    sub = env.payload_as(AlertSubmitted)
                    await repository.record_alert(
                        session, alert_id=env.alert_id, thread_id=env.thread_id, sender_agency=sub.alert.sender_agency,
                        submitted_by=sub.submitted_by, received_at=env.occurred_at, alert=sub.alert.model_dump(mode="json"),
                        trace_id=trace_id_of(env.traceparent),
                    )
                elif env.type is EventType.ALERT_ROUTED:
                    await repository.record_routing(session, env.alert_id, env.payload_as(AlertRouted))
                elif env.type is EventType.DELIVERY_REQUESTED:
                    await repository.record_view(session, env.alert_id, env.payload_as(DeliveryRequested))
                elif env.type is EventType.DELIVERY_STATUS:
                    await repository.record_delivery(session, env.alert_id, env.payload_as(DeliveryStatus), env.occurred_at)
                elif env.type is EventType.ALERT_ACKNOWLEDGED:
                    await repository.record_ack(session, env.alert_id, env.payload_as(AlertAcknowledged), env.occurred_at)
                elif env.type is EventType.ALERT_FORWARDED:
                    await repository.record_forward(session, env.alert_id, env.payload_as(AlertForwarded), env.occurred_at)
                elif env.type is EventType.OPERATOR_ACTION:
                    action = env.payload_as(OperatorAction)
                    if action.action == "alert.escalate" and env.alert_id is not None:
                        await repository.record_escalation(session, env.alert_id, action.target, env.occurred_at)
                EVENTS_HANDLED.labels("gateway", env.type).inc()
            await repository.notify_changed(session, changed)
            await session.commit()

