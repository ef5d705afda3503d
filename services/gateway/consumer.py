"""The gateway's status projection, fed by the submitted, routed, delivery and acknowledgement topics.

A poll is one transaction of a few array statements (repository.PROJECTION_STATEMENTS, their text
the same whatever the batch size) and one NOTIFY naming every alert it changed. The projection
is what stores an alert's row: the accept path writes nothing (docs/architecture.md, "Accept path").
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import orjson
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


class Batch:
    """One poll's rows per statement, deduplicated per key as the records' order decides."""

    def __init__(self) -> None:
        self.alerts: dict = {}  # alert_id → row: the first submission wins, as ON CONFLICT keeps the stored one
        self.routing: dict = {}  # alert_id → the latest decision of kind alert/update/cancel
        self.forward_denials: list[tuple] = []  # (alert_id, denied JSON): merged after the decisions, in order
        self.routed: dict = {}  # (alert_id, endpoint) → row: the latest why
        self.views: dict = {}  # (alert_id, endpoint) → row: the latest view
        self.deliveries: dict = {}  # (alert_id, endpoint) → the row of the highest attempt (the later of equals)
        self.after: list = []  # acks, forwards, escalations: order-sensitive and rare, one statement each

    def add(self, env: Envelope, now: datetime) -> None:
        aid = env.alert_id
        if env.type is EventType.ALERT_SUBMITTED:
            sub = env.payload_as(AlertSubmitted)
            self.alerts.setdefault(aid, repository.alert_row(
                alert_id=aid, thread_id=env.thread_id, sender_agency=sub.alert.sender_agency, submitted_by=sub.submitted_by,
                received_at=env.occurred_at, alert=sub.alert.model_dump(mode="json"),
                cap=repository.cap_column(sub.cap.model_dump(), sub.cap_signature and sub.cap_signature.model_dump(mode="json"),
                                                   sub.unresolved_references) if sub.cap else None,
                cap_original=sub.cap_original,
                trace_id=trace_id_of(env.traceparent)))
        elif env.type is EventType.ALERT_ROUTED:
            decision = env.payload_as(AlertRouted)
            denied = [d.model_dump(mode="json") for d in decision.denied]
            if decision.kind == "forward":  # a forward adds recipients and denials; the original decision stays
                self.forward_denials.append((aid, orjson.dumps(denied).decode()))
            else:
                self.routing[aid] = orjson.dumps({"ruleset_hash": decision.ruleset_hash, "denied": denied}).decode()
            for r in decision.recipients:
                self.routed[aid, r.endpoint] = {"alert_id": aid, "endpoint": r.endpoint, "agency": r.agency, "unit": r.unit,
                                                "profile": r.profile.value, "rule": r.rule, "reason": r.reason, "updated_at": now}
        elif env.type is EventType.DELIVERY_REQUESTED:
            req = env.payload_as(DeliveryRequested)
            self.views[aid, req.endpoint] = {"alert_id": aid, "endpoint": req.endpoint, "agency": req.agency, "unit": req.unit,
                                             "profile": req.profile.value, "updated_at": now,
                                             "view": orjson.dumps(req.body).decode()}
        elif env.type is EventType.DELIVERY_STATUS:
            st = env.payload_as(DeliveryStatus)
            held = self.deliveries.get((aid, st.endpoint))
            if held is None or held["attempts"] <= st.attempt:
                self.deliveries[aid, st.endpoint] = {
                    "alert_id": aid, "endpoint": st.endpoint, "agency": st.agency, "state": st.state.value,
                    "attempts": st.attempt, "http_status": st.http_status, "error": st.error, "updated_at": now,
                    "delivered_at": env.occurred_at if st.state.value == "delivered" else None}
        elif env.type is EventType.ALERT_ACKNOWLEDGED:
            self.after.append((repository.record_ack, aid, env.payload_as(AlertAcknowledged), env.occurred_at))
        elif env.type is EventType.ALERT_FORWARDED:
            self.after.append((repository.record_forward, aid, env.payload_as(AlertForwarded), env.occurred_at))
        elif env.type is EventType.OPERATOR_ACTION:
            action = env.payload_as(OperatorAction)
            if action.action == "alert.escalate" and aid is not None:
                self.after.append((repository.record_escalation, aid, action.target, env.occurred_at))

    async def write(self, session) -> None:
        await repository.project(session, repository.INSERT_ALERTS, list(self.alerts.values()))
        await repository.project(session, repository.SET_ROUTING,
                                 [{"alert_id": a, "routing": r} for a, r in self.routing.items()])
        for aid, denied in self.forward_denials:
            await repository.merge_forward_denials(session, aid, denied)
        await repository.project(session, repository.UPSERT_ROUTED, list(self.routed.values()))
        await repository.project(session, repository.UPSERT_VIEWS, list(self.views.values()))
        await repository.project(session, repository.UPSERT_DELIVERIES, list(self.deliveries.values()))
        for record, *args in self.after:
            await record(session, *args)


class StatusView:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        batch, changed, now = Batch(), set(), datetime.now(timezone.utc)
        envelopes = [Envelope.from_bytes(record.value) for record in records]
        for env in envelopes:
            batch.add(env, now)
            if env.alert_id is not None:
                changed.add(env.alert_id)
        async with self.rt.sessions() as session:
            await batch.write(session)
            await repository.notify_changed(session, changed)
            await session.commit()
        for env in envelopes:
            EVENTS_HANDLED.labels("gateway", env.type).inc()
