"""Every SQL statement of the notifier."""
from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID

from sqlalchemy import and_, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.notifier.models import ack_watch, attempts, deliveries, endpoints, outbox


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


async def rotate_secret(session: AsyncSession, endpoint: str, overlap: timedelta = timedelta(0)) -> str:
    """Replace an endpoint's secret; the old one keeps signing beside it for `overlap`."""
    secret, now = new_secret(), _now()
    await session.execute(insert(endpoints).values(endpoint=endpoint, secret=secret, created_at=now).on_conflict_do_update(
        index_elements=[endpoints.c.endpoint],
        set_={"secret": secret, "previous_secret": endpoints.c.secret, "previous_until": now + overlap},
    ))
    return secret


async def secrets_by_endpoint(session: AsyncSession, ids: Sequence[str] | None = None) -> dict[str, str]:
    query = select(endpoints.c.endpoint, endpoints.c.secret)
    if ids is not None:
        query = query.where(endpoints.c.endpoint.in_(ids))
    return {row.endpoint: row.secret for row in await session.execute(query)}


async def known_endpoints(session: AsyncSession, ids: set[str]) -> set[str]:
    """Return which of `ids` the notifier has a secret for (the others are unknown)."""
    if not ids:
        return set()
    return set((await session.execute(select(endpoints.c.endpoint).where(endpoints.c.endpoint.in_(ids)))).scalars())


async def set_endpoint_enabled(session: AsyncSession, endpoint: str, enabled: bool, reason: str | None = None) -> bool:
    """Enable or disable an endpoint; return whether it exists."""
    result = await session.execute(update(endpoints).where(endpoints.c.endpoint == endpoint).values(
        enabled=enabled, disabled_reason=None if enabled else reason,
    ))
    return result.rowcount > 0


async def set_endpoint_rate(session: AsyncSession, endpoint: str, rate: float | None) -> bool:
    result = await session.execute(update(endpoints).where(endpoints.c.endpoint == endpoint).values(rate_per_second=rate))
    return result.rowcount > 0


async def list_endpoints(session: AsyncSession) -> list[dict]:
    """Return every endpoint's state and its last success and failure — never its secrets."""
    rows = await session.execute(select(
        endpoints.c.endpoint, endpoints.c.enabled, endpoints.c.disabled_reason, endpoints.c.rate_per_second,
        endpoints.c.created_at, endpoints.c.previous_until, endpoints.c.last_success_at, endpoints.c.last_failure_at,
        endpoints.c.last_error, endpoints.c.circuit_state, endpoints.c.consecutive_failures, endpoints.c.circuit_open_until,
    ).order_by(endpoints.c.endpoint))
    return [dict(r) for r in rows.mappings()]


async def counts_by_endpoint(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Return, per endpoint, how many of its deliveries are pending, delivered and failed."""
    rows = await session.execute(text("SELECT endpoint, state, count(*) AS n FROM deliveries GROUP BY endpoint, state"))
    found: dict[str, dict[str, int]] = {}
    for r in rows:
        found.setdefault(r.endpoint, {"pending": 0, "delivered": 0, "failed": 0})[r.state] = r.n
    return found


async def endpoint_exists(session: AsyncSession, endpoint: str) -> bool:
    return await session.scalar(select(func.count()).where(endpoints.c.endpoint == endpoint)) > 0


async def last_failed(session: AsyncSession, endpoint: str) -> datetime | None:
    """Return when the endpoint's latest dead letter was given up on, if it has any."""
    return await session.scalar(select(func.max(deliveries.c.finished_at))
                                .where(deliveries.c.endpoint == endpoint, deliveries.c.state == "failed"))


def _arrays(rows: list[dict], columns: dict[str, str]) -> dict[str, list]:
    """Return one list per column, for statements that take arrays (`unnest`): their text never changes."""
    return {name: [r[name] for r in rows] for name in columns}


def _unnest(columns: dict[str, str]) -> str:
    return ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())


DELIVERY_COLUMNS = {
    "delivery_id": "uuid", "request_event_id": "uuid", "alert_id": "uuid", "thread_id": "uuid", "endpoint": "text",
    "agency": "text", "url": "text", "body": "text", "traceparent": "text", "state": "text", "attempts": "int",
    "due_at": "timestamptz", "created_at": "timestamptz", "finished_at": "timestamptz", "reason": "text",
    "schedule_start": "int", "format": "text", "language": "text",
}
# A delivered row is final: a late result of a duplicate send never turns it back.
_UPSERT_DELIVERIES = text(f"""
    INSERT INTO deliveries ({", ".join(DELIVERY_COLUMNS)})
    SELECT {", ".join("CAST(body AS jsonb)" if c == "body" else c for c in DELIVERY_COLUMNS)}
    FROM unnest({_unnest(DELIVERY_COLUMNS)}) AS x({", ".join(DELIVERY_COLUMNS)})
    ON CONFLICT (delivery_id) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
        due_at = excluded.due_at, finished_at = excluded.finished_at, reason = excluded.reason
    WHERE deliveries.state <> 'delivered'""")
ATTEMPT_COLUMNS = {
    "delivery_id": "uuid", "attempt": "int", "started_at": "timestamptz", "latency_ms": "float8", "http_status": "int",
    "error": "text", "response_excerpt": "text", "outcome": "text", "reason": "text", "next_attempt_at": "timestamptz",
}
_INSERT_ATTEMPTS = text(f"INSERT INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) SELECT * FROM unnest({_unnest(ATTEMPT_COLUMNS)})")
RETRY_COLUMNS = {"delivery_id": "uuid", "endpoint": "text", "due_at": "timestamptz", "leased_until": "timestamptz"}
_UPSERT_RETRIES = text(f"""
    INSERT INTO retries ({", ".join(RETRY_COLUMNS)}) SELECT * FROM unnest({_unnest(RETRY_COLUMNS)})
    ON CONFLICT (delivery_id) DO UPDATE SET due_at = excluded.due_at, leased_until = excluded.leased_until""")
_DELETE_RETRIES = text("DELETE FROM retries WHERE delivery_id = ANY(CAST(:ids AS uuid[]))")
WATCH_COLUMNS = {"alert_id": "uuid", "agency": "text", "delivery_id": "uuid", "deadline": "timestamptz"}
_INSERT_WATCHES = text(f"""
    INSERT INTO ack_watch (alert_id, agency, delivery_id, deadline, state, updated_at)
    SELECT *, 'waiting', now() FROM unnest({_unnest(WATCH_COLUMNS)}) ON CONFLICT DO NOTHING""")
OUTCOME_COLUMNS = {"endpoint": "text", "last_success_at": "timestamptz", "last_failure_at": "timestamptz",
                   "last_error": "text", "circuit_state": "text", "consecutive_failures": "int",
                   "circuit_open_until": "timestamptz"}
_RECORD_OUTCOMES = text(f"""
    UPDATE endpoints SET
        last_success_at = greatest(endpoints.last_success_at, x.last_success_at),
        last_failure_at = greatest(endpoints.last_failure_at, x.last_failure_at),
        last_error = CASE WHEN x.last_failure_at IS NOT NULL AND (endpoints.last_failure_at IS NULL
                          OR endpoints.last_failure_at <= x.last_failure_at) THEN x.last_error ELSE endpoints.last_error END,
        circuit_state = x.circuit_state, consecutive_failures = x.consecutive_failures,
        circuit_open_until = x.circuit_open_until
    FROM unnest({_unnest(OUTCOME_COLUMNS)}) AS x({", ".join(OUTCOME_COLUMNS)})
    WHERE endpoints.endpoint = x.endpoint""")
_SEEN = text("""
    SELECT (SELECT n FROM endpoint_epoch) AS epoch,
           ARRAY(SELECT delivery_id FROM deliveries WHERE delivery_id = ANY(CAST(:ids AS uuid[]))) AS known""")
_CLAIM = text("""
    WITH due AS (
        SELECT r.delivery_id FROM retries r JOIN endpoints e ON e.endpoint = r.endpoint
        WHERE e.enabled AND r.due_at <= :now AND (r.leased_until IS NULL OR r.leased_until < :now)
          AND r.endpoint = ANY(CAST(:owned AS text[])) AND NOT r.endpoint = ANY(CAST(:held AS text[]))
        ORDER BY r.due_at LIMIT :limit FOR UPDATE OF r SKIP LOCKED)
    UPDATE retries SET leased_until = :until FROM due, deliveries d
    WHERE retries.delivery_id = due.delivery_id AND d.delivery_id = retries.delivery_id
    RETURNING d.*""")
_ENDPOINTS = text("""
    SELECT (SELECT n FROM endpoint_epoch) AS epoch, endpoint, secret, previous_secret, previous_until, enabled, rate_per_second
    FROM endpoints""")


async def seen(conn: AsyncConnection, ids: list[UUID]) -> tuple[int, set[UUID]]:
    """Return the endpoints' epoch and which of `ids` already have a delivery row (one round trip:
    autocommit, so no BEGIN and ROLLBACK around it)."""
    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
    row = (await conn.execute(_SEEN, {"ids": ids})).one()
    return row.epoch, set(row.known)


async def endpoint_states(conn: AsyncConnection) -> tuple[int, dict[str, dict]]:
    """Return the endpoints' epoch and, per endpoint, its secrets, switch and rate limit."""
    rows = (await conn.execute(_ENDPOINTS)).mappings().all()
    return (rows[0]["epoch"] if rows else -1), {r["endpoint"]: dict(r) for r in rows}


def signing_secrets(state: dict, now: datetime) -> list[str]:
    """Return the secrets that sign now, newest first: the previous one too during its overlap."""
    previous = state["previous_secret"] if state["previous_until"] and state["previous_until"] > now else None
    return [state["secret"]] + ([previous] if previous else [])


async def record(session: AsyncSession, *, rows: list[dict], attempts: list[dict], retries: list[dict],
                 finished: list[UUID], outcomes: list[dict], watches: list[dict]) -> None:
    """Write one group commit's effects, a statement per table, each taking arrays (the caller commits).

    `rows`: each delivery's latest state (one per id); `retries`: those to send later (upserted);
    `finished`: ids leaving the retry queue; `outcomes`: per endpoint, last success/failure and circuit.
    """
    for stmt, found, columns in ((_UPSERT_DELIVERIES, rows, DELIVERY_COLUMNS), (_INSERT_ATTEMPTS, attempts, ATTEMPT_COLUMNS),
                                 (_UPSERT_RETRIES, retries, RETRY_COLUMNS), (_RECORD_OUTCOMES, outcomes, OUTCOME_COLUMNS),
                                 (_INSERT_WATCHES, watches, WATCH_COLUMNS)):
        if found:
            await session.execute(stmt, _arrays(found, columns))
    if finished:
        await session.execute(_DELETE_RETRIES, {"ids": finished})


async def claim_retries(session: AsyncSession, *, owned: list[str], held: list[str], limit: int, lease: timedelta,
                        now: datetime | None = None) -> list[dict]:
    """Lease due retries of enabled endpoints this instance owns and may send to now; rows leased
    elsewhere are skipped, not waited for. Oldest due first."""
    now = now or _now()
    rows = await session.execute(_CLAIM, {"now": now, "owned": owned, "held": held, "limit": limit, "until": now + lease})
    return sorted((dict(r) for r in rows.mappings()), key=lambda r: (r["due_at"], r["created_at"]))


async def add_deliveries(session: AsyncSession, rows: list[dict]) -> set[UUID]:
    """Store deliveries to send later (escalations) once each, queued as due now; return the new ids."""
    if not rows:
        return set()
    now = _now()
    result = await session.execute(insert(deliveries).values(
        [{**r, "due_at": now, "created_at": now, "finished_at": now if r["state"] == "failed" else None} for r in rows]
    ).on_conflict_do_nothing().returning(deliveries.c.delivery_id, deliveries.c.endpoint, deliveries.c.state))
    new = result.all()
    await queue_retries(session, [(r.delivery_id, r.endpoint) for r in new if r.state == "pending"], now)
    return {r.delivery_id for r in new}


async def queue_retries(session: AsyncSession, found: list[tuple[UUID, str]], due: datetime) -> None:
    """Put pending deliveries (id, endpoint) in the retry queue, due at `due`."""
    if found:
        await session.execute(_UPSERT_RETRIES, _arrays(
            [{"delivery_id": i, "endpoint": e, "due_at": due, "leased_until": None} for i, e in found], RETRY_COLUMNS))


def _restart(now: datetime) -> dict:
    return {"state": "pending", "due_at": now, "finished_at": None,
            "schedule_start": deliveries.c.attempts, "reason": None}


async def replay(session: AsyncSession, delivery_id: UUID) -> dict | None:
    """Put a failed delivery back in line (same webhook-id, a fresh retry schedule); return it, or None."""
    now = _now()
    rows = await session.execute(
        update(deliveries).where(deliveries.c.delivery_id == delivery_id, deliveries.c.state == "failed")
        .values(**_restart(now)).returning(deliveries.c.delivery_id, deliveries.c.endpoint, deliveries.c.alert_id)
    )
    row = rows.mappings().first()
    if row is None:
        return None
    await queue_retries(session, [(row["delivery_id"], row["endpoint"])], now)
    return dict(row)


async def recover(session: AsyncSession, endpoint: str, since: datetime) -> int:
    """Put every delivery to `endpoint` that failed since `since` back in line; return how many."""
    now = _now()
    result = await session.execute(
        update(deliveries).where(deliveries.c.endpoint == endpoint, deliveries.c.state == "failed",
                                 deliveries.c.finished_at >= since).values(**_restart(now)).returning(deliveries.c.delivery_id)
    )
    ids = list(result.scalars())
    await queue_retries(session, [(i, endpoint) for i in ids], now)
    return len(ids)


async def add_outbox(session: AsyncSession, *, topic: str, key: str, value: bytes) -> None:
    await add_outbox_rows(session, [{"topic": topic, "key": key, "value": value}])


async def add_outbox_rows(session: AsyncSession, rows: list[dict]) -> None:
    if rows:
        now = _now()
        await session.execute(outbox.insert(), [{**r, "created_at": now} for r in rows])


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


async def failed_deliveries(session: AsyncSession, limit: int = 100, endpoint: str | None = None) -> list[dict]:
    """Return the newest dead-lettered deliveries, with why each was given up on."""
    query = (
        select(deliveries.c.delivery_id, deliveries.c.alert_id, deliveries.c.endpoint, deliveries.c.attempts,
               deliveries.c.finished_at, deliveries.c.reason)
        .where(and_(deliveries.c.state == "failed")).order_by(deliveries.c.finished_at.desc()).limit(limit)
    )
    if endpoint:
        query = query.where(deliveries.c.endpoint == endpoint)
    rows = await session.execute(query)
    return [dict(r) for r in rows.mappings()]


_DELIVERY = (deliveries.c.delivery_id, deliveries.c.alert_id, deliveries.c.thread_id, deliveries.c.endpoint,
             deliveries.c.agency, deliveries.c.url, deliveries.c.format, deliveries.c.state, deliveries.c.attempts,
             deliveries.c.created_at, deliveries.c.due_at, deliveries.c.finished_at, deliveries.c.reason)
_ATTEMPT = (attempts.c.attempt, attempts.c.started_at, attempts.c.latency_ms, attempts.c.outcome, attempts.c.http_status,
            attempts.c.error, attempts.c.reason, attempts.c.response_excerpt, attempts.c.next_attempt_at)


async def _attempts_of(session: AsyncSession, ids: Sequence[UUID]) -> dict[UUID, list[dict]]:
    rows = await session.execute(select(attempts.c.delivery_id, *_ATTEMPT).where(attempts.c.delivery_id.in_(ids))
                                 .order_by(attempts.c.delivery_id, attempts.c.attempt))
    found: dict[UUID, list[dict]] = {i: [] for i in ids}
    for r in rows.mappings():
        found[r["delivery_id"]].append({k: v for k, v in r.items() if k != "delivery_id"})
    return found


async def delivery_with_attempts(session: AsyncSession, delivery_id: UUID) -> dict | None:
    """Return one delivery's state and every attempt made (outcome, status, latency, response excerpt)."""
    row = (await session.execute(select(*_DELIVERY).where(deliveries.c.delivery_id == delivery_id))).mappings().first()
    if row is None:
        return None
    return {**row, "attempt_log": (await _attempts_of(session, [delivery_id]))[delivery_id]}


async def deliveries_of_alert(session: AsyncSession, alert_id: UUID) -> list[dict]:
    """Return every delivery of an alert (escalations included), oldest first, each with its attempts
    and the recipient agency's acknowledgement state."""
    rows = (await session.execute(
        select(*_DELIVERY, ack_watch.c.state.label("ack_state"), ack_watch.c.delivery_id.label("watched"))
        .outerjoin(ack_watch, and_(ack_watch.c.alert_id == deliveries.c.alert_id, ack_watch.c.agency == deliveries.c.agency))
        .where(deliveries.c.alert_id == alert_id).order_by(deliveries.c.created_at, deliveries.c.endpoint)
    )).mappings().all()
    tries = await _attempts_of(session, [r["delivery_id"] for r in rows])
    return [{**r, "attempt_log": tries[r["delivery_id"]]} for r in rows]


async def record_acks(session: AsyncSession, acks: list[dict]) -> None:
    """Mark (alert, agency) pairs acknowledged, whether or not their watch exists yet."""
    if acks:
        now = _now()
        stmt = insert(ack_watch).values([{**a, "state": "acknowledged", "updated_at": now} for a in acks])
        await session.execute(stmt.on_conflict_do_update(
            index_elements=[ack_watch.c.alert_id, ack_watch.c.agency],
            set_={"state": "acknowledged", "updated_at": now}, where=ack_watch.c.state == "waiting",
        ))


async def claim_overdue_watches(session: AsyncSession, now: datetime, limit: int = 100) -> list[dict]:
    """Mark waiting watches past their deadline escalated and return them (each escalates once)."""
    due = (select(ack_watch.c.alert_id, ack_watch.c.agency)
           .where(ack_watch.c.state == "waiting", ack_watch.c.deadline <= now)
           .limit(limit).with_for_update(skip_locked=True)).cte("due")
    rows = await session.execute(
        update(ack_watch).where(ack_watch.c.alert_id == due.c.alert_id, ack_watch.c.agency == due.c.agency)
        .values(state="escalated", updated_at=now).returning(ack_watch)
    )
    return [dict(r) for r in rows.mappings()]


async def delivery_row(session: AsyncSession, delivery_id: UUID | None) -> dict | None:
    if delivery_id is None:
        return None
    row = (await session.execute(select(deliveries).where(deliveries.c.delivery_id == delivery_id))).mappings().first()
    return dict(row) if row else None


async def watch_state(session: AsyncSession, alert_id: UUID, agency: str) -> str | None:
    return await session.scalar(select(ack_watch.c.state).where(ack_watch.c.alert_id == alert_id, ack_watch.c.agency == agency))
