"""Every SQL statement of the notifier."""
from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from uuid import UUID

from sqlalchemy import DateTime, and_, bindparam, case, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

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


async def signing_state(session: AsyncSession, ids: Sequence[str]) -> dict[str, dict]:
    """Return, per endpoint, the secrets that sign now (newest first) and its rate limit."""
    now = _now()
    rows = await session.execute(
        select(endpoints.c.endpoint, endpoints.c.secret, endpoints.c.previous_secret, endpoints.c.previous_until,
               endpoints.c.rate_per_second).where(endpoints.c.endpoint.in_(ids))
    )
    found = {}
    for r in rows:
        keys = [r.secret] + ([r.previous_secret] if r.previous_secret and r.previous_until and r.previous_until > now else [])
        found[r.endpoint] = {"secrets": keys, "rate": r.rate_per_second}
    return found


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
        endpoints.c.last_error,
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


async def add_deliveries(session: AsyncSession, rows: list[dict]) -> set[UUID]:
    """Store delivery requests once each (the delivery id absorbs redelivered requests); return the new ids."""
    if not rows:
        return set()
    now = _now()
    result = await session.execute(insert(deliveries).values(
        [{**r, "due_at": now, "created_at": now, "finished_at": now if r["state"] == "failed" else None} for r in rows]
    ).on_conflict_do_nothing().returning(deliveries.c.delivery_id))
    return set(result.scalars())


async def claim_due(
    session: AsyncSession, *, limit: int, lease: timedelta, busy_endpoints: Sequence[str], now: datetime | None = None,
) -> list[dict]:
    """Lease due deliveries of enabled endpoints for this worker; rows leased elsewhere are skipped, not waited for."""
    now = now or _now()
    enabled = select(endpoints.c.endpoint).where(endpoints.c.enabled)
    due = (
        select(deliveries.c.delivery_id)
        .where(
            deliveries.c.state == "pending", deliveries.c.due_at <= now,
            or_(deliveries.c.leased_until.is_(None), deliveries.c.leased_until < now),
            deliveries.c.endpoint.not_in(busy_endpoints) if busy_endpoints else text("true"),
            deliveries.c.endpoint.in_(enabled),
        )
        .order_by(deliveries.c.due_at).limit(limit).with_for_update(skip_locked=True)
    )
    rows = await session.execute(
        update(deliveries).where(deliveries.c.delivery_id.in_(due.scalar_subquery()))
        .values(leased_until=now + lease).returning(deliveries)
    )
    return sorted((dict(r) for r in rows.mappings()), key=lambda r: (r["due_at"], r["created_at"]))


async def release(session: AsyncSession, delivery_ids: Sequence[UUID]) -> None:
    """Give leased deliveries back untouched (circuit open or rate limit reached)."""
    if delivery_ids:
        await session.execute(update(deliveries).where(deliveries.c.delivery_id.in_(delivery_ids)).values(leased_until=None))


OUTCOMES = {"delivered": "delivered", "pending": "retrying", "failed": "failed"}


async def record_attempts(session: AsyncSession, results: list[dict]) -> None:
    """Record a batch of attempts and each delivery's new state (one round trip per statement)."""
    if not results:
        return
    now = _now()
    await session.execute(attempts.insert(), [{
        "delivery_id": r["delivery_id"], "attempt": r["attempt"], "started_at": r["started_at"],
        "latency_ms": r["latency_ms"], "http_status": r["http_status"], "error": r["error"],
        "response_excerpt": r["excerpt"], "outcome": OUTCOMES[r["state"]], "reason": r["reason"],
        "next_attempt_at": r["due_at"],
    } for r in results])
    await session.execute(
        update(deliveries).where(deliveries.c.delivery_id == bindparam("b_id")).values(
            attempts=bindparam("b_attempt"), state=bindparam("b_state"), leased_until=None, reason=bindparam("b_reason"),
            due_at=func.coalesce(bindparam("b_due_at", type_=DateTime(timezone=True)), deliveries.c.due_at),
            finished_at=bindparam("b_finished_at", type_=DateTime(timezone=True)),
        ),
        [{"b_id": r["delivery_id"], "b_attempt": r["attempt"], "b_state": r["state"], "b_reason": r["reason"],
          "b_due_at": r["due_at"], "b_finished_at": None if r["state"] == "pending" else now} for r in results],
    )


async def record_endpoint_outcomes(session: AsyncSession, outcomes: list[dict]) -> None:
    """Keep endpoints' latest success, and latest failure with its reason (`outcomes`: one row per
    endpoint with `endpoint`, `last_success_at`, `last_failure_at`, `last_error`, each may be None)."""
    if not outcomes:
        return
    ok, failed = (bindparam(n, type_=DateTime(timezone=True)) for n in ("b_ok", "b_failed"))
    newer = and_(failed.is_not(None), or_(endpoints.c.last_failure_at.is_(None), endpoints.c.last_failure_at <= failed))
    # In endpoint order: two instances' batches never lock endpoints in opposite orders.
    await session.execute(update(endpoints).where(endpoints.c.endpoint == bindparam("b_endpoint")).values(
        last_success_at=func.greatest(endpoints.c.last_success_at, ok),  # greatest() skips NULLs
        last_failure_at=func.greatest(endpoints.c.last_failure_at, failed),
        last_error=case((newer, bindparam("b_error")), else_=endpoints.c.last_error),
    ), [{"b_endpoint": o["endpoint"], "b_ok": o["last_success_at"], "b_failed": o["last_failure_at"],
         "b_error": o["last_error"]} for o in sorted(outcomes, key=lambda o: o["endpoint"])])


def _restart(now: datetime) -> dict:
    return {"state": "pending", "due_at": now, "leased_until": None, "finished_at": None,
            "schedule_start": deliveries.c.attempts, "reason": None}


async def replay(session: AsyncSession, delivery_id: UUID) -> dict | None:
    """Put a failed delivery back in line (same webhook-id, a fresh retry schedule); return it, or None."""
    rows = await session.execute(
        update(deliveries).where(deliveries.c.delivery_id == delivery_id, deliveries.c.state == "failed")
        .values(**_restart(_now())).returning(deliveries.c.delivery_id, deliveries.c.endpoint, deliveries.c.alert_id)
    )
    row = rows.mappings().first()
    return dict(row) if row else None


async def recover(session: AsyncSession, endpoint: str, since: datetime) -> int:
    """Put every delivery to `endpoint` that failed since `since` back in line; return how many."""
    result = await session.execute(
        update(deliveries).where(deliveries.c.endpoint == endpoint, deliveries.c.state == "failed",
                                 deliveries.c.finished_at >= since).values(**_restart(_now()))
    )
    return result.rowcount


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


async def count_pending(session: AsyncSession, endpoint: str) -> int:
    return await session.scalar(select(func.count()).where(deliveries.c.endpoint == endpoint, deliveries.c.state == "pending"))


async def watch_acks(session: AsyncSession, watches: list[dict]) -> None:
    """Start waiting for acknowledgements (an acknowledgement already stored wins)."""
    if watches:
        now = _now()
        await session.execute(insert(ack_watch).values(
            [{**w, "state": "waiting", "updated_at": now} for w in watches]
        ).on_conflict_do_nothing())


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
