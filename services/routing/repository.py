"""Every SQL statement of the routing service."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.models import activations, decisions, rulesets
from shared.events import AlertRouted

ACTIVATION_LOCK = 0x526F7574


async def save_decision(
    session: AsyncSession, *, event_id: UUID, alert_id: UUID, thread_id: UUID, alert: dict | None,
    decision: AlertRouted, decided_at: datetime,
) -> None:
    """Store a decision once; a replayed event keeps its first decision."""
    await session.execute(insert(decisions).values(
        event_id=event_id, alert_id=alert_id, thread_id=thread_id, kind=decision.kind, alert=alert,
        ruleset_hash=decision.ruleset_hash, decision=decision.model_dump(mode="json"), decided_at=decided_at,
    ).on_conflict_do_nothing())


async def thread_rows(session: AsyncSession, thread_id: UUID) -> list[dict]:
    rows = await session.execute(select(decisions).where(decisions.c.thread_id == thread_id).order_by(decisions.c.decided_at))
    return [dict(r) for r in rows.mappings()]


async def decisions_for(session: AsyncSession, alert_id: UUID) -> list[dict]:
    rows = await session.execute(select(decisions).where(decisions.c.alert_id == alert_id).order_by(decisions.c.decided_at))
    return [dict(r) for r in rows.mappings()]


async def lock_activation(session: AsyncSession) -> None:
    """Serialise activations for this transaction: two instances bootstrapping at once activate once."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ACTIVATION_LOCK})


async def store_version(session: AsyncSession, *, hash: str, content: dict, by: str) -> None:
    await session.execute(insert(rulesets).values(
        hash=hash, content=content, created_at=datetime.now(timezone.utc), created_by=by,
    ).on_conflict_do_nothing())


async def activate(session: AsyncSession, *, hash: str, by: str, source: str) -> None:
    await session.execute(activations.insert().values(
        hash=hash, activated_at=datetime.now(timezone.utc), activated_by=by, source=source))


async def active_version(session: AsyncSession) -> tuple[str, dict] | None:
    """Return (hash, content) of the most recently activated version, if any."""
    row = (await session.execute(
        select(rulesets.c.hash, rulesets.c.content).join(activations, activations.c.hash == rulesets.c.hash)
        .order_by(activations.c.id.desc()).limit(1)
    )).first()
    return (row.hash, row.content) if row else None


async def active_hash(session: AsyncSession) -> str | None:
    return await session.scalar(select(activations.c.hash).order_by(activations.c.id.desc()).limit(1))


async def history(session: AsyncSession, limit: int = 50) -> list[dict]:
    """Return the latest activations, newest first: hash, activated_at, by, source."""
    rows = await session.execute(select(
        activations.c.hash, activations.c.activated_at, activations.c.activated_by.label("by"), activations.c.source,
    ).order_by(activations.c.id.desc()).limit(limit))
    return [dict(r) for r in rows.mappings()]


async def version(session: AsyncSession, hash: str) -> dict | None:
    """Return one stored version: its content, when and by whom it was first stored."""
    row = (await session.execute(
        select(rulesets.c.hash, rulesets.c.content, rulesets.c.created_at, rulesets.c.created_by).where(rulesets.c.hash == hash)
    )).mappings().first()
    return dict(row) if row else None
