"""Every SQL statement of the notifier."""
from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.models import attempts, deliveries, endpoints, outbox


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def ensure_endpoints(session: AsyncSession, ids: set[str]) -> None:
    """Give every endpoint seen for the first time its own signing secret."""
    if ids:
        await session.execute(insert(endpoints).values(
            [{"endpoint": e, "secret": new_secret(), "created_at": _now()} for e in sorted(ids)]
        ).on_conflict_do_nothing())


async def rotate_secret(session: AsyncSession, endpoint: str) -> str:
    secret = new_secret()
    await session.execute(insert(endpoints).values(endpoint=endpoint, secret=secret, created_at=_now()).on_conflict_do_update(
        index_elements=[endpoints.c.endpoint], set_={"secret": secret},
    ))
    return secret


async def secrets_by_endpoint(session: AsyncSession, ids: Sequence[str] | None = None) -> dict[str, str]:
    query = select(endpoints.c.endpoint, endpoints.c.secret)
    if ids is not None:
        query = query.where(endpoints.c.endpoint.in_(ids))
    return {row.endpoint: row.secret for row in await session.execute(query)}


async def add_deliveries(session: AsyncSession, rows: list[dict]) -> None:
    """Store delivery requests once each (the delivery id absorbs redelivered requests)."""
    if rows:
        now = _now()
        await session.execute(insert(deliveries).values(
            [{**r, "due_at": now, "created_at": now} for r in rows]
        ).on_conflict_do_nothing())


async def claim_due(session: AsyncSession, *, limit: int, lease: timedelta, busy_endpoints: Sequence[str]) -> list[dict]:
    """Lease due deliveries for this worker; rows leased elsewhere are skipped, not waited for."""
    now = _now()
    due = (
        select(deliveries.c.delivery_id)
        .where(
            deliveries.c.state == "pending", deliveries.c.due_at <= now,
            or_(deliveries.c.leased_until.is_(None), deliveries.c.leased_until < now),
            deliveries.c.endpoint.not_in(busy_endpoints) if busy_endpoints else text("true"),
        )
        .order_by(deliveries.c.due_at).limit(limit).with_for_update(skip_locked=True)
    )
    rows = await session.execute(
        update(deliveries).where(deliveries.c.delivery_id.in_(due.scalar_subquery()))
        .values(leased_until=now + lease).returning(deliveries)
    )
    return [dict(r) for r in rows.mappings()]


async def record_attempt(
    session: AsyncSession, *, delivery_id: UUID, attempt: int, started_at: datetime, latency_ms: float,
    http_status: int | None, error: str | None, excerpt: str | None, state: str, due_at: datetime | None,
) -> None:
    await session.execute(attempts.insert().values(
        delivery_id=delivery_id, attempt=attempt, started_at=started_at, latency_ms=latency_ms,
        http_status=http_status, error=error, response_excerpt=excerpt,
    ))
    finished = state != "pending"
    await session.execute(update(deliveries).where(deliveries.c.delivery_id == delivery_id).values(
        attempts=attempt, state=state, leased_until=None,
        due_at=due_at if due_at else deliveries.c.due_at, finished_at=_now() if finished else None,
    ))


async def add_outbox(session: AsyncSession, *, topic: str, key: str, value: bytes) -> None:
    await session.execute(outbox.insert().values(topic=topic, key=key, value=value, created_at=_now()))


async def claim_outbox(session: AsyncSession, limit: int = 200) -> list[dict]:
    rows = await session.execute(
        select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit).with_for_update(skip_locked=True)
    )
    return [dict(r) for r in rows.mappings()]


async def mark_published(session: AsyncSession, ids: list[int]) -> None:
    await session.execute(update(outbox).where(outbox.c.id.in_(ids)).values(published_at=_now()))


async def delivery_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(text("SELECT state, count(*) AS n FROM deliveries GROUP BY state"))
    return {r.state: r.n for r in rows}


async def failed_deliveries(session: AsyncSession, limit: int = 100) -> list[dict]:
    rows = await session.execute(
        select(deliveries.c.delivery_id, deliveries.c.alert_id, deliveries.c.endpoint, deliveries.c.attempts, deliveries.c.finished_at)
        .where(and_(deliveries.c.state == "failed")).order_by(deliveries.c.finished_at.desc()).limit(limit)
    )
    return [dict(r) for r in rows.mappings()]
