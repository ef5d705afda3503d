"""Every SQL statement of the gateway."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.models import alerts, api_keys, forwards, idempotency_keys, recipients
from shared.auth import Principal, Role
from shared.events import AlertAcknowledged, AlertForwarded, AlertRouted, DeliveryRequested, DeliveryStatus


FLOW_CHANNEL = "gateway_flow"  # PostgreSQL NOTIFY channel: an alert's status view changed


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- keys -------------------------------------------------------------------------------------

async def add_key(
    session: AsyncSession, *, key_id: str, agency: str, roles: list[Role], key_hash: str, label: str,
    posts: list[str] | None = None,
) -> None:
    await session.execute(api_keys.insert().values(
        key_id=key_id, agency=agency, roles=[r.value for r in roles], key_hash=key_hash, label=label, created_at=_now(),
        posts=posts or None,
    ))


async def list_keys(session: AsyncSession) -> list[dict]:
    rows = await session.execute(select(api_keys).order_by(api_keys.c.created_at))
    return [dict(r) for r in rows.mappings()]


async def get_key(session: AsyncSession, key_id: str) -> dict | None:
    row = (await session.execute(select(api_keys).where(api_keys.c.key_id == key_id))).mappings().first()
    return dict(row) if row else None


async def revoke_key(session: AsyncSession, key_id: str, *, replaced_by: str | None = None) -> bool:
    result = await session.execute(
        update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=_now(), replaced_by=replaced_by)
    )
    return result.rowcount == 1


async def principal_for_key(session: AsyncSession, key_hash: str) -> tuple[Principal, frozenset[str] | None] | None:
    """Return the active key's principal and the posts it may submit for (None: any)."""
    row = (await session.execute(
        select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    )).mappings().first()
    if row is None:
        return None
    posts = frozenset(row["posts"]) if row["posts"] else None
    return Principal(row["key_id"], row["agency"], frozenset(Role(r) for r in row["roles"])), posts


# --- idempotency ------------------------------------------------------------------------------

async def insert_key(session: AsyncSession, *, agency: str, key: str, request_hash: str, alert_id: UUID) -> bool:
    """Reserve (agency, key) in flight; return False if it already exists."""
    now = _now()
    inserted = await session.scalar(insert(idempotency_keys).values(
        agency=agency, key=key, request_hash=request_hash, alert_id=alert_id, state="in_flight",
        created_at=now, updated_at=now,
    ).on_conflict_do_nothing().returning(idempotency_keys.c.alert_id))
    return inserted is not None


async def lock_key(session: AsyncSession, *, agency: str, key: str) -> dict:
    row = (await session.execute(select(idempotency_keys).where(
        idempotency_keys.c.agency == agency, idempotency_keys.c.key == key).with_for_update())).mappings().one()
    return dict(row)


async def finish_key(session: AsyncSession, *, agency: str, key: str, state: str, status_code: int | None, response: dict | None) -> None:
    await session.execute(update(idempotency_keys).where(
        idempotency_keys.c.agency == agency, idempotency_keys.c.key == key,
    ).values(state=state, status_code=status_code, response=response, updated_at=_now()))


async def purge_keys(session: AsyncSession, older_than: datetime) -> int:
    result = await session.execute(delete(idempotency_keys).where(
        idempotency_keys.c.updated_at < older_than, idempotency_keys.c.state != "in_flight"))
    return result.rowcount


# --- alerts and their status ------------------------------------------------------------------

async def thread_of(session: AsyncSession, alert_id: UUID) -> UUID | None:
    return await session.scalar(select(alerts.c.thread_id).where(alerts.c.alert_id == alert_id))


async def cap_alert(session: AsyncSession, *, agency: str, sender: str, identifier: str, sent: str) -> UUID | None:
    """Return the id of the CAP message `agency` sent as (sender, identifier, sent), whichever id scheme it got."""
    return await session.scalar(select(alerts.c.alert_id).where(
        alerts.c.sender_agency == agency, alerts.c.cap["sender"].astext == sender,
        alerts.c.cap["identifier"].astext == identifier, alerts.c.cap["sent"].astext == sent).limit(1))


async def thread_naming(session: AsyncSession, *, agency: str, alert_id: UUID) -> UUID | None:
    """Return the thread of `agency`'s earliest message that named `alert_id` before BLOnet received it, if any."""
    return await session.scalar(select(alerts.c.thread_id).where(
        alerts.c.sender_agency == agency, alerts.c.cap["unresolved_references"].contains([str(alert_id)]),
    ).order_by(alerts.c.received_at).limit(1))


async def record_alert(
    session: AsyncSession, *, alert_id: UUID, thread_id: UUID, sender_agency: str, submitted_by: str,
    received_at: datetime, alert: dict, cap: dict | None = None, cap_original: bytes | None = None,
    trace_id: str | None = None,
) -> None:
    stmt = insert(alerts).values(
        alert_id=alert_id, thread_id=thread_id, sender_agency=sender_agency, submitted_by=submitted_by,
        received_at=received_at, alert=alert, cap=cap, cap_original=cap_original, trace_id=trace_id,
    )
    if cap is None:
        await session.execute(stmt.on_conflict_do_update(
            index_elements=[alerts.c.alert_id], set_={"trace_id": trace_id}, where=alerts.c.trace_id.is_(None)))
    else:  # the status consumer may have written the row first, without the CAP origin; an original is never overwritten
        await session.execute(stmt.on_conflict_do_update(
            index_elements=[alerts.c.alert_id], set_={"cap": cap, "cap_original": cap_original,
                                                      "trace_id": func.coalesce(alerts.c.trace_id, trace_id)},
            where=alerts.c.cap_original.is_(None) & (alerts.c.sender_agency == sender_agency)))


async def record_routing(session: AsyncSession, alert_id: UUID, decision: AlertRouted) -> None:
    denied = [d.model_dump(mode="json") for d in decision.denied]
    if decision.kind == "forward":  # a forward adds recipients and denials; the original decision stays
        row = await session.scalar(select(alerts.c.routing).where(alerts.c.alert_id == alert_id))
        if row:
            denied = row.get("denied", []) + [d for d in denied if d not in row.get("denied", [])]
            await session.execute(update(alerts).where(alerts.c.alert_id == alert_id).values(routing={**row, "denied": denied}))
    else:
        await session.execute(update(alerts).where(alerts.c.alert_id == alert_id).values(routing={
            "ruleset_hash": decision.ruleset_hash, "denied": denied,
        }))
    for r in decision.recipients:
        stmt = insert(recipients).values(
            alert_id=alert_id, endpoint=r.endpoint, agency=r.agency, unit=r.unit, profile=r.profile.value,
            rule=r.rule, reason=r.reason, state="routed", updated_at=_now(),
        )
        # A status may have arrived first (another partition): keep its state, fill in the why.
        await session.execute(stmt.on_conflict_do_update(
            index_elements=[recipients.c.alert_id, recipients.c.endpoint],
            set_={"unit": r.unit, "profile": r.profile.value, "rule": r.rule, "reason": r.reason},
        ))


async def record_view(session: AsyncSession, alert_id: UUID, request: DeliveryRequested) -> None:
    stmt = insert(recipients).values(
        alert_id=alert_id, endpoint=request.endpoint, agency=request.agency, unit=request.unit,
        profile=request.profile.value, state="routed", updated_at=_now(), view=request.body,
    )
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[recipients.c.alert_id, recipients.c.endpoint], set_={"view": request.body},
    ))


async def record_delivery(session: AsyncSession, alert_id: UUID, status: DeliveryStatus, at: datetime | None = None) -> None:
    values = {
        "state": status.state.value, "attempts": status.attempt, "http_status": status.http_status,
        "error": status.error, "updated_at": _now(),
    }
    delivered = (at or _now()) if status.state.value == "delivered" else None
    stmt = insert(recipients).values(alert_id=alert_id, endpoint=status.endpoint, agency=status.agency,
                                     delivered_at=delivered, **values)
    # Only a later attempt overwrites: a replayed older status never rolls the view back.
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[recipients.c.alert_id, recipients.c.endpoint],
        set_={**values, "delivered_at": func.coalesce(recipients.c.delivered_at, stmt.excluded.delivered_at)},
        where=recipients.c.attempts <= status.attempt,
    ))


async def record_escalation(session: AsyncSession, alert_id: UUID, agency: str, at: datetime) -> None:
    await session.execute(update(recipients).where(recipients.c.alert_id == alert_id, recipients.c.agency == agency)
                          .values(escalated_at=at))


async def notify_changed(session: AsyncSession, alert_ids: set[UUID]) -> None:
    """Tell every gateway instance's live flow which alerts changed (delivered when the transaction commits)."""
    if alert_ids:
        await session.execute(text("SELECT pg_notify(:channel, x) FROM unnest(CAST(:ids AS text[])) AS x"),
                              {"channel": FLOW_CHANNEL, "ids": [str(a) for a in alert_ids]})


async def record_ack(session: AsyncSession, alert_id: UUID, ack: AlertAcknowledged, at: datetime) -> None:
    match = [recipients.c.alert_id == alert_id, recipients.c.agency == ack.agency]
    if ack.unit:
        match.append(recipients.c.unit == ack.unit)
    # Acks of one thread stay in order on one partition; a replayed older ack never overwrites a newer one.
    await session.execute(update(recipients).where(
        *match, or_(recipients.c.acked_at.is_(None), recipients.c.acked_at <= at),
    ).values(ack_status=ack.status.value, ack_comment=ack.comment, acked_at=at))


async def record_forward(session: AsyncSession, alert_id: UUID, fwd: AlertForwarded, at: datetime) -> None:
    await session.execute(insert(forwards).values(
        forward_id=fwd.forward_id, alert_id=alert_id, agency=fwd.agency, unit=fwd.unit, to=fwd.to,
        comment=fwd.comment, forwarded_at=at,
    ).on_conflict_do_nothing())


async def get_alert(session: AsyncSession, alert_id: UUID) -> dict | None:
    row = (await session.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
    return dict(row) if row else None


async def recipients_of(session: AsyncSession, alert_id: UUID, agency: str | None = None) -> list[dict]:
    query = select(recipients).where(recipients.c.alert_id == alert_id)
    if agency is not None:
        query = query.where(recipients.c.agency == agency)
    rows = await session.execute(query.order_by(recipients.c.agency, recipients.c.endpoint))
    return [dict(r) for r in rows.mappings()]


async def forwards_of(session: AsyncSession, alert_id: UUID) -> list[dict]:
    rows = await session.execute(select(forwards).where(forwards.c.alert_id == alert_id).order_by(forwards.c.forwarded_at))
    return [dict(r) for r in rows.mappings()]


async def list_alerts(
    session: AsyncSession, *, agency: str | None, boxes: set[str], sender: bool, filters: dict, after: UUID | None,
    limit: int,
) -> list[dict]:
    """Return alerts newest first: every alert (`agency` None), or those `agency` sent (in `boxes`:
    'sent') or received ('received'; for a `sender`, only those it did not send itself)."""
    query = select(alerts.c.alert_id, alerts.c.thread_id, alerts.c.sender_agency, alerts.c.received_at, alerts.c.alert)
    if agency is not None:
        sent = alerts.c.sender_agency == agency
        received = exists().where(recipients.c.alert_id == alerts.c.alert_id, recipients.c.agency == agency)
        received = and_(~sent, received) if sender else received
        query = query.where(or_(*[{"sent": sent, "received": received}[b] for b in sorted(boxes)]))
    for name, value in filters.items():
        query = query.where(alerts.c.alert[name].astext == value)
    if after is not None:
        query = query.where(alerts.c.alert_id < after)
    rows = await session.execute(query.order_by(alerts.c.alert_id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


async def count_alerts(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(alerts))
