"""Every SQL statement of the gateway."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

import orjson
from sqlalchemy import ARRAY, Uuid, and_, any_, bindparam, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.models import alerts, api_keys, forwards, idempotency_keys, recipients
from shared.auth import Principal, Role
from shared.events import AlertAcknowledged, AlertForwarded


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


KEY_RESERVED = select(exists().where(idempotency_keys.c.alert_id == bindparam("alert_id"),
                                     idempotency_keys.c.state != "failed"))


async def key_reserved(session: AsyncSession, alert_id: UUID) -> bool:
    """Whether an Idempotency-Key (a CAP message's own, or a client's) holds this id: it may be in flight."""
    return bool(await session.scalar(KEY_RESERVED, {"alert_id": alert_id}))


ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")


async def commit_without_waiting(session: AsyncSession) -> None:
    """Let this transaction's commit return before its WAL is on disk (docs/architecture.md says where and why)."""
    await session.execute(ASYNC_COMMIT)


async def purge_keys(session: AsyncSession, older_than: datetime) -> int:
    result = await session.execute(delete(idempotency_keys).where(
        idempotency_keys.c.updated_at < older_than, idempotency_keys.c.state != "in_flight"))
    return result.rowcount


# --- alerts and their status ------------------------------------------------------------------

async def thread_of(session: AsyncSession, alert_id: UUID) -> UUID | None:
    return await session.scalar(select(alerts.c.thread_id).where(alerts.c.alert_id == alert_id))


# The keys are literals, so the planner uses the index on (cap ->> 'identifier') (migration 0005).
CAP_ALERT = text("""SELECT alert_id FROM alerts WHERE cap ->> 'identifier' = :identifier AND sender_agency = :agency
                    AND cap ->> 'sender' = :sender AND cap ->> 'sent' = :sent LIMIT 1""")


async def cap_alert(session: AsyncSession, *, agency: str, sender: str, identifier: str, sent: str) -> UUID | None:
    """Return the id of the CAP message `agency` sent as (sender, identifier, sent), whichever id scheme it got."""
    return await session.scalar(CAP_ALERT, {"agency": agency, "sender": sender, "identifier": identifier, "sent": sent})


# --- the status projection: a few array statements per poll, their text the same whatever its size ---
# Each takes one array per column (unnest zips them), so asyncpg prepares it once per connection.
# Rows are deduplicated per key before (StatusView): ON CONFLICT may touch a row once per statement.

INSERT_ALERTS = text("""
INSERT INTO alerts (alert_id, thread_id, sender_agency, submitted_by, received_at, alert, cap, cap_original, trace_id)
SELECT u.alert_id, u.thread_id, u.sender_agency, u.submitted_by, u.received_at, CAST(u.alert AS jsonb),
       CAST(u.cap AS jsonb), u.cap_original, u.trace_id
FROM unnest(CAST(:alert_id AS uuid[]), CAST(:thread_id AS uuid[]), CAST(:sender_agency AS text[]),
            CAST(:submitted_by AS text[]), CAST(:received_at AS timestamptz[]), CAST(:alert AS text[]),
            CAST(:cap AS text[]), CAST(:cap_original AS bytea[]), CAST(:trace_id AS text[]))
     AS u(alert_id, thread_id, sender_agency, submitted_by, received_at, alert, cap, cap_original, trace_id)
ON CONFLICT (alert_id) DO UPDATE SET
    trace_id = COALESCE(alerts.trace_id, EXCLUDED.trace_id),
    cap = CASE WHEN alerts.cap_original IS NULL AND EXCLUDED.cap_original IS NOT NULL THEN EXCLUDED.cap ELSE alerts.cap END,
    cap_original = COALESCE(alerts.cap_original, EXCLUDED.cap_original)
WHERE alerts.sender_agency = EXCLUDED.sender_agency  -- an original is never overwritten, nor another agency's row touched
  AND (alerts.trace_id IS NULL OR (alerts.cap_original IS NULL AND EXCLUDED.cap_original IS NOT NULL))
""")

SET_ROUTING = text("""
UPDATE alerts SET routing = CAST(u.routing AS jsonb)
FROM unnest(CAST(:alert_id AS uuid[]), CAST(:routing AS text[])) AS u(alert_id, routing)
WHERE alerts.alert_id = u.alert_id
""")

# A forward adds its denials to the original decision's; rare, so one statement per forward.
MERGE_FORWARD_DENIALS = text("""
UPDATE alerts SET routing = jsonb_set(routing, '{denied}', COALESCE(routing->'denied', '[]'::jsonb) || COALESCE((
    SELECT jsonb_agg(d) FROM jsonb_array_elements(CAST(:denied AS jsonb)) AS d
    WHERE NOT COALESCE(routing->'denied', '[]'::jsonb) @> jsonb_build_array(d)), '[]'::jsonb))
WHERE alert_id = :alert_id AND routing IS NOT NULL
""")

# A status may have arrived first (another partition): keep its state, fill in the why.
UPSERT_ROUTED = text("""
INSERT INTO recipients (alert_id, endpoint, agency, unit, profile, rule, reason, state, updated_at)
SELECT u.alert_id, u.endpoint, u.agency, u.unit, u.profile, u.rule, u.reason, 'routed', u.updated_at
FROM unnest(CAST(:alert_id AS uuid[]), CAST(:endpoint AS text[]), CAST(:agency AS text[]), CAST(:unit AS text[]),
            CAST(:profile AS text[]), CAST(:rule AS text[]), CAST(:reason AS text[]), CAST(:updated_at AS timestamptz[]))
     AS u(alert_id, endpoint, agency, unit, profile, rule, reason, updated_at)
ON CONFLICT (alert_id, endpoint) DO UPDATE SET
    unit = EXCLUDED.unit, profile = EXCLUDED.profile, rule = EXCLUDED.rule, reason = EXCLUDED.reason
""")

UPSERT_VIEWS = text("""
INSERT INTO recipients (alert_id, endpoint, agency, unit, profile, state, updated_at, view)
SELECT u.alert_id, u.endpoint, u.agency, u.unit, u.profile, 'routed', u.updated_at, CAST(u.view AS jsonb)
FROM unnest(CAST(:alert_id AS uuid[]), CAST(:endpoint AS text[]), CAST(:agency AS text[]), CAST(:unit AS text[]),
            CAST(:profile AS text[]), CAST(:updated_at AS timestamptz[]), CAST(:view AS text[]))
     AS u(alert_id, endpoint, agency, unit, profile, updated_at, view)
ON CONFLICT (alert_id, endpoint) DO UPDATE SET view = EXCLUDED.view
""")

# Only a later attempt overwrites: a replayed older status never rolls the view back.
UPSERT_DELIVERIES = text("""
INSERT INTO recipients (alert_id, endpoint, agency, state, attempts, http_status, error, updated_at, delivered_at)
SELECT u.alert_id, u.endpoint, u.agency, u.state, u.attempts, u.http_status, u.error, u.updated_at, u.delivered_at
FROM unnest(CAST(:alert_id AS uuid[]), CAST(:endpoint AS text[]), CAST(:agency AS text[]), CAST(:state AS text[]),
            CAST(:attempts AS int[]), CAST(:http_status AS int[]), CAST(:error AS text[]),
            CAST(:updated_at AS timestamptz[]), CAST(:delivered_at AS timestamptz[]))
     AS u(alert_id, endpoint, agency, state, attempts, http_status, error, updated_at, delivered_at)
ON CONFLICT (alert_id, endpoint) DO UPDATE SET
    state = EXCLUDED.state, attempts = EXCLUDED.attempts, http_status = EXCLUDED.http_status, error = EXCLUDED.error,
    updated_at = EXCLUDED.updated_at, delivered_at = COALESCE(recipients.delivered_at, EXCLUDED.delivered_at)
WHERE recipients.attempts <= EXCLUDED.attempts
""")

PROJECTION_STATEMENTS = (INSERT_ALERTS, SET_ROUTING, MERGE_FORWARD_DENIALS, UPSERT_ROUTED, UPSERT_VIEWS, UPSERT_DELIVERIES)


async def thread_naming(session: AsyncSession, *, agency: str, alert_id: UUID) -> UUID | None:
    """Return the thread of `agency`'s earliest message that named `alert_id` before BLOnet received it, if any."""
    return await session.scalar(select(alerts.c.thread_id).where(
        alerts.c.sender_agency == agency, alerts.c.cap["unresolved_references"].contains([str(alert_id)]),
    ).order_by(alerts.c.received_at).limit(1))



def cap_column(origin: dict, signature: dict | None, unresolved: list) -> dict:
    """The alerts.cap document: the CAP origin, its signature as checked and any unresolved references."""
    return {**origin, "signature": signature, **({"unresolved_references": [str(r) for r in unresolved]} if unresolved else {})}


def _columns(rows: list[dict]) -> dict[str, list]:
    """Rows of one statement as one list per column (what unnest takes)."""
    return {name: [r[name] for r in rows] for name in rows[0]}


async def project(session: AsyncSession, statement, rows: list[dict]) -> None:
    """Run one projection statement over `rows` (nothing if there are none)."""
    if rows:
        await session.execute(statement, _columns(rows))


def alert_row(*, alert_id: UUID, thread_id: UUID, sender_agency: str, submitted_by: str, received_at: datetime,
              alert: dict, cap: dict | None = None, cap_original: bytes | None = None, trace_id: str | None = None) -> dict:
    """One row of INSERT_ALERTS (documents as JSON text: the array is cast to jsonb in SQL)."""
    return {"alert_id": alert_id, "thread_id": thread_id, "sender_agency": sender_agency, "submitted_by": submitted_by,
            "received_at": received_at, "alert": orjson.dumps(alert).decode(),
            "cap": None if cap is None else orjson.dumps(cap).decode(), "cap_original": cap_original, "trace_id": trace_id}


async def record_alert(session: AsyncSession, **fields) -> None:
    """Store one alert row as the projection does (tools and tests; the projection stores a poll's at once)."""
    await project(session, INSERT_ALERTS, [alert_row(**fields)])


async def merge_forward_denials(session: AsyncSession, alert_id: UUID, denied: str) -> None:
    await session.execute(MERGE_FORWARD_DENIALS, {"alert_id": alert_id, "denied": denied})


async def record_escalation(session: AsyncSession, alert_id: UUID, agency: str, at: datetime) -> None:
    await session.execute(update(recipients).where(recipients.c.alert_id == alert_id, recipients.c.agency == agency)
                          .values(escalated_at=at))


NOTIFY_CHANGED = text("SELECT pg_notify(:channel, x) FROM unnest(CAST(:ids AS text[])) AS x")


async def notify_changed(session: AsyncSession, alert_ids: set[UUID]) -> None:
    """Tell every gateway instance which alerts changed (delivered when the transaction commits): one
    statement however many, which also wakes a GET waiting for the projection to catch up."""
    if alert_ids:
        await session.execute(NOTIFY_CHANGED, {"channel": FLOW_CHANNEL, "ids": [str(a) for a in alert_ids]})


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


STORED_IDS = select(alerts.c.alert_id).where(alerts.c.alert_id == any_(bindparam("ids", type_=ARRAY(Uuid))))


async def stored_ids(session: AsyncSession, alert_ids: list[UUID]) -> list[UUID]:
    return list(await session.scalars(STORED_IDS, {"ids": alert_ids}))


GET_ALERT = select(alerts).where(alerts.c.alert_id == bindparam("alert_id"))


async def get_alert(session: AsyncSession, alert_id: UUID) -> dict | None:
    row = (await session.execute(GET_ALERT, {"alert_id": alert_id})).mappings().first()
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
