"""Every SQL statement of the audit service."""
from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit.entry import ERASURE
from services.audit.models import checkpoints, entries, payloads, tree_nodes
from shared.merkle import Node

APPEND_LOCK = 0x41756469  # one appender or signer at a time, across instances: the tree has one head


async def lock_log(session: AsyncSession) -> None:
    """Hold the log's append lock until this transaction ends."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK})


async def size(session: AsyncSession) -> int:
    last = await session.scalar(select(entries.c.idx).order_by(entries.c.idx.desc()).limit(1))
    return 0 if last is None else last + 1


async def known_event_ids(session: AsyncSession, ids: Sequence[UUID]) -> set[UUID]:
    rows = await session.execute(select(entries.c.event_id).where(entries.c.event_id.in_(ids)))
    return set(rows.scalars())


async def node_hashes(session: AsyncSession, nodes: Collection[Node]) -> dict[Node, bytes]:
    """Fetch stored subtree hashes by (level, k), in one round trip."""
    if not nodes:
        return {}
    levels, idxs = zip(*nodes)
    want = text("SELECT n.level, n.idx, n.hash FROM tree_nodes n "
                "JOIN unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) AS w(level, idx) "
                "USING (level, idx)")
    rows = await session.execute(want, {"levels": list(levels), "idxs": list(idxs)})
    return {(r.level, r.idx): r.hash for r in rows}


async def append(session: AsyncSession, entry_rows: list[dict], node_rows: list[dict], payload_rows: list[dict]) -> None:
    """Insert new rows with COPY, inside the session's transaction: the cheapest way in, and INSERT is all it needs."""
    raw = (await (await session.connection()).get_raw_connection()).driver_connection
    for table, rows in ((entries, entry_rows), (tree_nodes, node_rows), (payloads, payload_rows)):
        if rows:
            columns = list(rows[0])
            await raw.copy_records_to_table(table.name, columns=columns, records=[tuple(r[c] for c in columns) for r in rows])


async def entry_bytes(session: AsyncSession, start: int, end: int) -> list[tuple[int, bytes]]:
    rows = await session.execute(select(entries.c.idx, entries.c.entry)
                                 .where(entries.c.idx >= start, entries.c.idx < end).order_by(entries.c.idx))
    return [(r.idx, r.entry) for r in rows]


async def index_of_leaf(session: AsyncSession, leaf_hash: bytes) -> int | None:
    return await session.scalar(select(tree_nodes.c.idx).where(tree_nodes.c.level == 0, tree_nodes.c.hash == leaf_hash))


async def latest_checkpoint(session: AsyncSession) -> dict | None:
    row = (await session.execute(select(checkpoints).order_by(checkpoints.c.tree_size.desc()).limit(1))).mappings().first()
    return dict(row) if row else None


async def checkpoint_list(session: AsyncSession, after: int, limit: int) -> list[dict]:
    rows = await session.execute(select(checkpoints).where(checkpoints.c.tree_size > after)
                                 .order_by(checkpoints.c.tree_size).limit(limit))
    return [dict(r) for r in rows.mappings()]


async def add_checkpoint(session: AsyncSession, tree_size: int, root: bytes, note: str, signed_at: datetime) -> None:
    await session.execute(insert(checkpoints).values(tree_size=tree_size, root_hash=root, note=note, signed_at=signed_at))


def _with_payload():
    return select(entries.c.idx, entries.c.entry, payloads.c.body, payloads.c.nonce).select_from(
        entries.outerjoin(payloads, payloads.c.idx == entries.c.idx))


async def trail(session: AsyncSession, alert_id: UUID) -> list[dict]:
    rows = await session.execute(_with_payload().add_columns(entries.c.event_id, entries.c.causation_id, entries.c.type)
                                 .where(entries.c.alert_id == alert_id).order_by(entries.c.idx))
    return [dict(r) for r in rows.mappings()]


async def erasures(session: AsyncSession) -> list[dict]:
    """Return every `audit.erasure` entry (one per erase command or retention sweep: few)."""
    rows = await session.execute(_with_payload().add_columns(entries.c.event_id, entries.c.causation_id, entries.c.type)
                                 .where(entries.c.type == ERASURE).order_by(entries.c.idx))
    return [dict(r) for r in rows.mappings()]


async def search(session: AsyncSession, *, agency: str | None, types: list[str] | None, since: datetime | None,
                 until: datetime | None, after: int, limit: int) -> list[dict]:
    query = _with_payload().where(entries.c.idx > after)
    if agency:
        query = query.where(entries.c.agencies.contains([agency]))
    if types:
        query = query.where(entries.c.type.in_(types))
    if since:
        query = query.where(entries.c.occurred_at >= since)
    if until:
        query = query.where(entries.c.occurred_at < until)
    rows = await session.execute(query.order_by(entries.c.idx).limit(limit))
    return [dict(r) for r in rows.mappings()]


async def payload_indexes(session: AsyncSession, *, alert_id: UUID | None = None,
                          stored_before: datetime | None = None) -> list[int]:
    """Return the indexes of the stored payloads of one alert's entries, or of those stored before a time."""
    query = select(payloads.c.idx)
    if alert_id is not None:
        query = query.where(payloads.c.idx.in_(select(entries.c.idx).where(entries.c.alert_id == alert_id)))
    if stored_before is not None:
        query = query.where(payloads.c.stored_at < stored_before)
    return sorted((await session.execute(query)).scalars())


async def erase_logged_payloads(session: AsyncSession, erasure_index: int) -> int:
    """Delete the payloads that the `audit.erasure` entry at `erasure_index` names; return how many.

    The service's role may not DELETE payloads: only this database function (migration 0003) may,
    and only those an erasure entry already in the log lists."""
    return await session.scalar(text("SELECT erase_logged_payloads(:i)"), {"i": erasure_index})
