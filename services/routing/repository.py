"""Every SQL statement of the routing service."""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.models import decisions
from shared.events import AlertRouted


async def save_decision(
    session: AsyncSession, *, alert_id: UUID, thread_id: UUID, event_id: UUID, decision: AlertRouted, decided_at: datetime
) -> None:
    """Store a decision once; a replayed alert keeps its first decision."""
    await session.execute(
        insert(decisions).values(
            alert_id=alert_id, thread_id=thread_id, event_id=event_id, ruleset_hash=decision.ruleset_hash,
            decision=decision.model_dump(mode="json"), decided_at=decided_at,
        ).on_conflict_do_nothing()
    )


async def get_decision(session: AsyncSession, alert_id: UUID) -> dict | None:
    row = (await session.execute(select(decisions).where(decisions.c.alert_id == alert_id))).mappings().first()
    return dict(row) if row else None
