"""Routing's Kafka handler: alert.submitted / alert.forwarded → decision → alert.routed + delivery.requested."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from aiokafka.structs import ConsumerRecord

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


def thread_of(rows: list[dict], thread_id, alert_id=None) -> Thread:
    """Rebuild what a thread did from its decisions, oldest first: its alert (or `alert_id`'s) and every recipient."""
    alerts = {r["alert_id"]: r["alert"] for r in rows if r["alert"]}
    original = alerts.get(alert_id or thread_id)
    recipients: dict[str, Recipient] = {}
    for row in rows:
        for r in row["decision"]["recipients"]:
            recipients.setdefault(r["endpoint"], Recipient.model_validate(r))
    return Thread(Alert.model_validate(original) if original else None, tuple(recipients.values()))


def needs_thread(cause: Envelope) -> bool:
    """A forward, an update or a cancel is decided against its thread; a new alert starts one."""
    return cause.type is EventType.ALERT_FORWARDED or cause.thread_id != cause.alert_id


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

    def route(self, cause: Envelope, thread_rows: list[dict]) -> tuple[list[tuple[str, str, Envelope]], dict]:
        """Decide on one event against its thread's decisions (stored and earlier in this poll); return
        what it produces and its decision row."""
        net = self.active.current
        # Decide at the time the event was accepted, so a replay reaches the same decision.
        now = cause.occurred_at
        if cause.type is EventType.ALERT_FORWARDED:
            forward = cause.payload_as(AlertForwarded)
            thread = thread_of(thread_rows, cause.thread_id, cause.alert_id)
            decision = decide_forward(forward, thread, net, now)
            alert, stored = thread.original, None
            by = {"agency": forward.agency, "unit": forward.unit, "comment": forward.comment}
        else:
            submitted = cause.payload_as(AlertSubmitted)
            alert = submitted.alert
            thread = thread_of(thread_rows, cause.thread_id) if needs_thread(cause) else Thread()
            decision = decide(alert, thread, net, now, unresolved=submitted.unresolved_references)
            stored, by = alert.model_dump(mode="json"), None
        produced = self.outputs(cause, decision, alert, net, by)  # no alert → no recipients, only the decision
        row = repository.decision_row(event_id=produced[0][2].event_id, alert_id=cause.alert_id, thread_id=cause.thread_id,
                                      alert=stored, decision=decision, decided_at=now)
        return produced, row

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        """One poll: read the threads it needs (one statement), decide in order, store every decision
        (one statement, committed by itself), then produce; the caller commits offsets only after every ack."""
        causes = [Envelope.from_bytes(record.value) for record in records]
        outputs, rows = [], []
        async with self.rt.sessions.autocommit() as session:
            threads: dict = {}
            for row in await repository.thread_rows(session, list({c.thread_id for c in causes if needs_thread(c)})):
                threads.setdefault(row["thread_id"], []).append(row)
            for cause in causes:
                log_context.set({"alert_id": str(cause.alert_id), "event_id": str(cause.event_id)})
                produced, row = self.route(cause, threads.get(cause.thread_id, []))
                threads.setdefault(cause.thread_id, []).append(row)  # a later event of this poll sees it, stored or not
                outputs += produced
                rows.append(row)
            await repository.save_decisions(session, rows)
            await session.commit()
        # Produce after the decisions are stored.
        futures = [await send(self.rt.producer, self.rt.settings.topic(t), k, e) for t, k, e in outputs]
        await asyncio.gather(*futures)
        for cause in causes:
            EVENTS_HANDLED.labels("routing", cause.type).inc()
        # Counted only now, so a batch that failed and is retried is not counted twice.
        count_decisions(e for _, _, e in outputs if e.type is EventType.ALERT_ROUTED)
