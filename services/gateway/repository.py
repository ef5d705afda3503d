"""Every SQL statement of the gateway."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.models import alerts, api_keys, recipients
from shared.auth import Principal, Role
from shared.events import AlertRouted, DeliveryStatus


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def add_key(session: AsyncSession, *, key_id: str, agency: str, roles: list[Role], key_hash: str, label: str) -> None:
    await session.execute(api_keys.insert().values(
        key_id=key_id, agency=agency, roles=[r.value for r in roles], key_hash=key_hash, label=label, created_at=_now(),
    ))


async def list_keys(session: AsyncSession) -> list[dict]:
    rows = await session.execute(select(api_keys).order_by(api_keys.c.created_at))
    return [dict(r) for r in rows.mappings()]


async def revoke_key(session: AsyncSession, key_id: str) -> bool:
    result = await session.execute(
        update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=_now())
    )
    return result.rowcount == 1


async def principal_for_key(session: AsyncSession, key_hash: str) -> Principal | None:
    row = (await session.execute(
        select(api_keys).where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
    )).mappings().first()
    return Principal(row["key_id"], row["agency"], frozenset(Role(r) for r in row["roles"])) if row else None


async def thread_of(session: AsyncSession, alert_id: UUID) -> UUID | None:
    return await session.scalar(select(alerts.c.thread_id).where(alerts.c.alert_id == alert_id))


async def record_alert(
    session: AsyncSession, *, alert_id: UUID, thread_id: UUID, sender_agency: str, submitted_by: str,
    received_at: datetime, alert: dict,
) -> None:
    await session.execute(insert(alerts).values(
        alert_id=alert_id, thread_id=thread_id, sender_agency=sender_agency, submitted_by=submitted_by,
        received_at=received_at, alert=alert,
    ).on_conflict_do_nothing())


async def record_routing(session: AsyncSession, alert_id: UUID, decision: AlertRouted) -> None:
    await session.execute(update(alerts).where(alerts.c.alert_id == alert_id).values(routing={
        "ruleset_hash": decision.ruleset_hash, "denied": [d.model_dump(mode="json") for d in decision.denied],
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


async def record_delivery(session: AsyncSession, alert_id: UUID, status: DeliveryStatus) -> None:
    values = {
        "state": status.state.value, "attempts": status.attempt, "http_status": status.http_status,
        "error": status.error, "updated_at": _now(),
    }
    stmt = insert(recipients).values(alert_id=alert_id, endpoint=status.endpoint, agency=status.agency, **values)
    # Only a later attempt overwrites: a replayed older status never rolls the view back.
    await session.execute(stmt.on_conflict_do_update(
        index_elements=[recipients.c.alert_id, recipients.c.endpoint], set_=values,
        where=recipients.c.attempts <= status.attempt,
    ))


async def alert_status(session: AsyncSession, alert_id: UUID) -> dict | None:
    row = (await session.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
    if row is None:
        return None
    rows = await session.execute(
        select(recipients).where(recipients.c.alert_id == alert_id).order_by(recipients.c.agency, recipients.c.endpoint)
    )
    return {"alert": dict(row), "recipients": [dict(r) for r in rows.mappings()]}


async def count_alerts(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(alerts))
