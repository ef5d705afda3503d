"""The notifier's business acts: status and dead-letter events, and operators' audited actions.

Every operator act writes its state change and its audit event (to the outbox) in one transaction,
so an action is never done without its audit record, nor recorded without being done. The caller
commits. Delivery status events are produced directly by the group commit (recorder.py).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import repository
from shared import topics
from shared.events import DeliveryState, DeliveryStatus, Envelope, OperatorAction
from shared.ids import derived_id, new_id
from shared.settings import Settings

SYSTEM_ACTOR = "notifier"


def status_envelopes(
    settings: Settings, *, row: dict, state: DeliveryState, attempt: int, http_status: int | None = None,
    error: str | None = None, latency_ms: float | None = None, next_attempt_at: datetime | None = None,
) -> list[tuple[str, str, Envelope]]:
    """Return (topic, key, event) of a delivery's status event, and for a failure its dead letter too.

    Event ids are derived from the delivery id and the attempt, so a repeated attempt (after a
    crash) produces the same ids, and consumers keep one.
    """
    event = DeliveryStatus(
        delivery_id=row["delivery_id"], endpoint=row["endpoint"], agency=row["agency"], state=state, attempt=attempt,
        http_status=http_status, error=error, latency_ms=latency_ms, next_attempt_at=next_attempt_at,
    )
    out = []
    for topic, key, tag in ((topics.DELIVERIES_STATUS, str(row["thread_id"]), "attempt"),
                            (topics.DELIVERIES_DEADLETTER, row["endpoint"], "deadletter")):
        if tag == "deadletter" and state is not DeliveryState.FAILED:
            continue
        env = Envelope.wrap(
            event, origin_node=settings.node_id, alert_id=row["alert_id"], thread_id=row["thread_id"],
            event_id=derived_id(row["delivery_id"], tag, attempt), traceparent=row.get("traceparent"),
        )
        env.causation_id = row["request_event_id"]
        out.append((settings.topic(topic.name), key, env))
    return out


async def record_action(
    session: AsyncSession, settings: Settings, *, action: str, target: str, actor: str,
    reason: str | None = None, detail: dict | None = None, alert_id: UUID | None = None,
) -> None:
    """Queue the audit event of an act on delivery state."""
    payload = OperatorAction(action=action, target=target, actor=actor, reason=reason, detail=detail or {})
    env = Envelope.wrap(payload, origin_node=settings.node_id, alert_id=alert_id, thread_id=None, event_id=new_id())
    await repository.add_outbox(session, topic=settings.topic(topics.OPERATIONS_ACTIONS.name), key=target, value=env.to_bytes())


class Refused(Exception):
    """An operator's act that cannot be done: `status` 404 (nothing by that id) or 409 (not in a state
    that allows it), and why, in one sentence."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _at(t: datetime | None) -> str:
    return t.isoformat(timespec="seconds") if t else "?"


def why_not_replayable(row: dict) -> str:
    """Return why a delivery that is not dead-lettered cannot be replayed."""
    if row["state"] == "delivered":
        return f"already delivered at {_at(row['finished_at'])} (attempt {row['attempts']})"
    if row["attempts"] == 0:
        return f"still pending (no attempt yet, due at {_at(row['due_at'])})"
    return f"still pending (attempt {row['attempts']} made, next at {_at(row['due_at'])})"


async def replay_delivery(session: AsyncSession, settings: Settings, delivery_id: UUID, *, actor: str) -> dict:
    """Send a dead-lettered delivery again with the same webhook-id; raise Refused if it is unknown or not failed."""
    row = await repository.replay(session, delivery_id)
    if row is None:
        found = await repository.delivery_row(session, delivery_id)
        if found is None:
            raise Refused(404, f"no delivery {delivery_id}")
        raise Refused(409, why_not_replayable(found))
    await record_action(session, settings, action="delivery.replay", target=str(delivery_id), actor=actor,
                        detail={"endpoint": row["endpoint"]}, alert_id=row["alert_id"])
    return row


async def recover_endpoint(
    session: AsyncSession, settings: Settings, endpoint: str, since: datetime, *, actor: str,
) -> tuple[int, str | None]:
    """Send again every delivery to `endpoint` that failed since `since`; return how many, and why none if none.

    Raise Refused for an endpoint the notifier does not know.
    """
    if not await repository.endpoint_exists(session, endpoint):
        raise Refused(404, f"no endpoint {endpoint}")
    count = await repository.recover(session, endpoint, since)
    await record_action(session, settings, action="endpoint.recover", target=endpoint, actor=actor,
                        detail={"since": since.isoformat(), "replayed": count})
    if count:
        return count, None
    last = await repository.last_failed(session, endpoint)
    if last is None:
        return 0, f"no delivery to {endpoint} is dead-lettered"
    return 0, f"no delivery to {endpoint} failed since {_at(since)}; its latest dead letter failed at {_at(last)}"


def resend_id(original: UUID) -> UUID:
    """Return the id of the delivery an escalation re-sends to the original endpoint."""
    return derived_id(original, "resend")


def fallback_id(original: UUID, endpoint: str) -> UUID:
    """Return the id of the delivery an escalation sends to the agency's fallback endpoint."""
    return derived_id(original, "escalate", endpoint)


def channel_of(url: str) -> str:
    return "email" if url.startswith("mailto:") else "webhook"


def present_delivery(row: dict) -> dict:
    """Return a stored delivery as operators see it: channel, webhook-id, next attempt, escalation."""
    out = {k: v for k, v in row.items() if k not in ("due_at", "watched")}
    watched, escalation = row.get("watched"), None
    if watched and row["delivery_id"] == resend_id(watched):
        escalation = "resend"
    elif watched and row["delivery_id"] == fallback_id(watched, row["endpoint"]):
        escalation = "fallback"
    return {**out, "webhook_id": str(row["delivery_id"]), "channel": channel_of(row["url"]),
            "next_attempt_at": row["due_at"] if row["state"] == "pending" else None,
            **({"ack_state": row.get("ack_state"), "escalation": escalation} if "watched" in row else {})}


CIRCUIT_COLUMNS = ("circuit_state", "consecutive_failures", "circuit_open_until")


def endpoint_health(endpoint: dict, counts: dict[str, int] | None) -> dict:
    """Return an endpoint's state with its health: its recorded circuit, its delivery counts, its last outcomes."""
    circuit = {"state": endpoint.get("circuit_state") or "closed", "consecutive_failures": endpoint.get("consecutive_failures") or 0,
               "open_until": endpoint.get("circuit_open_until")}
    out = {k: v for k, v in endpoint.items() if k not in CIRCUIT_COLUMNS}
    return {**out, "circuit": circuit, "deliveries": counts or {"pending": 0, "delivered": 0, "failed": 0}}


async def set_enabled(
    session: AsyncSession, settings: Settings, endpoint: str, enabled: bool, *, actor: str, reason: str | None = None,
) -> bool:
    """Enable or disable an endpoint (disabled: its deliveries wait); False if it is unknown."""
    found = await repository.set_endpoint_enabled(session, endpoint, enabled, reason)
    if found:
        await record_action(session, settings, action="endpoint.enable" if enabled else "endpoint.disable",
                            target=endpoint, actor=actor, reason=reason)
    return found


async def rotate_secret(session: AsyncSession, settings: Settings, endpoint: str, *, actor: str) -> str:
    """Give an endpoint a new secret; the old one keeps signing beside it for the overlap."""
    overlap = timedelta(seconds=settings.secret_overlap_seconds)
    secret = await repository.rotate_secret(session, endpoint, overlap)
    await record_action(session, settings, action="endpoint.rotate_secret", target=endpoint, actor=actor,
                        detail={"overlap_seconds": settings.secret_overlap_seconds})
    return secret
