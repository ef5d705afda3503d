"""Every SQL statement of the audit service."""
from __future__ import annotations

from uuid import UUID

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit.models import entries

APPEND_LOCK = 0x41756469  # one appender at a time: the chain has a single head


async def lock_head(session: AsyncSession) -> tuple[int, bytes | None]:
    """Take the append lock for this transaction; return (next index, previous entry hash)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK})
    row = (await session.execute(select(entries.c.idx, entries.c.entry_hash).order_by(entries.c.idx.desc()).limit(1))).first()
    return (row.idx + 1, row.entry_hash) if row else (0, None)


async def known_event_ids(session: AsyncSession, ids: list[UUID]) -> set[UUID]:
    rows = await session.execute(select(entries.c.event_id).where(entries.c.event_id.in_(ids)))
    return set(rows.scalars())


async def append(session: AsyncSession, rows: list[dict]) -> None:
    if rows:
        await session.execute(entries.insert().values(rows))


async def trail(session: AsyncSession, alert_id: UUID) -> list[dict]:
    rows = await session.execute(select(entries).where(entries.c.alert_id == alert_id).order_by(entries.c.idx))
    return [dict(r) for r in rows.mappings()]


async def range_(session: AsyncSession, start: int, end: int) -> list[dict]:
    rows = await session.execute(select(entries).where(entries.c.idx >= start, entries.c.idx < end).order_by(entries.c.idx))
    return [dict(r) for r in rows.mappings()]
