"""Every SQL statement of the routing service."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

import orjson
from sqlalchemy import ARRAY, Uuid, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.routing.models import activations, decisions, rulesets
from shared.events import AlertRouted

ACTIVATION_LOCK = 0x526F7574


SAVE_DECISIONS = text("""
INSERT INTO decisions (event_id, alert_id, thread_id, kind, alert, ruleset_hash, decision, decided_at)
SELECT u.event_id, u.alert_id, u.thread_id, u.kind, CAST(u.alert AS jsonb), u.ruleset_hash, CAST(u.decision AS jsonb),
       u.decided_at
FROM unnest(CAST(:event_id AS uuid[]), CAST(:alert_id AS uuid[]), CAST(:thread_id AS uuid[]), CAST(:kind AS text[]),
            CAST(:alert AS text[]), CAST(:ruleset_hash AS text[]), CAST(:decision AS text[]),
            CAST(:decided_at AS timestamptz[]))
     AS u(event_id, alert_id, thread_id, kind, alert, ruleset_hash, decision, decided_at)
ON CONFLICT (event_id) DO NOTHING
""")  # one statement per poll whatever its size; a replayed event keeps its first decision


def decision_row(*, event_id: UUID, alert_id: UUID, thread_id: UUID, alert: dict | None, decision: AlertRouted,
                 decided_at: datetime) -> dict:
    """A decision as `thread_rows` returns it (documents as dicts)."""
    return {"event_id": event_id, "alert_id": alert_id, "thread_id": thread_id, "kind": decision.kind, "alert": alert,
            "ruleset_hash": decision.ruleset_hash, "decision": decision.model_dump(mode="json"), "decided_at": decided_at}


async def save_decisions(session: AsyncSession, rows: list[dict]) -> None:
    """Store a poll's decisions in one statement (their documents as JSON text, cast in SQL)."""
    if rows:
        await session.execute(SAVE_DECISIONS, {
            "event_id": [r["event_id"] for r in rows], "alert_id": [r["alert_id"] for r in rows],
            "thread_id": [r["thread_id"] for r in rows], "kind": [r["kind"] for r in rows],
            "alert": [None if r["alert"] is None else orjson.dumps(r["alert"]).decode() for r in rows],
            "ruleset_hash": [r["ruleset_hash"] for r in rows], "decision": [orjson.dumps(r["decision"]).decode() for r in rows],
            "decided_at": [r["decided_at"] for r in rows]})


THREAD_ROWS = (select(decisions).where(decisions.c.thread_id == any_(bindparam("threads", type_=ARRAY(Uuid))))
               .order_by(decisions.c.decided_at))


async def thread_rows(session: AsyncSession, thread_ids: list[UUID]) -> list[dict]:
    """Every stored decision of these threads, oldest first: one statement for a whole poll."""
    if not thread_ids:
        return []
    rows = await session.execute(THREAD_ROWS, {"threads": thread_ids})
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
