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

APPEND_LOCK = 0x41756469  # one appender at a time, across instances: the tree has one head
SIGN_LOCK = 0x41756473  # one checkpoint signer at a time; appends go on meanwhile

# The append path's statements, built once: they take arrays, so their text (and the prepared
# statement each connection keeps for it) never changes with the size of the batch.
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_HEAD = text(
    "SELECT (SELECT idx FROM entries ORDER BY idx DESC LIMIT 1) AS last,"
    " ARRAY(SELECT n.hash FROM unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) WITH ORDINALITY"
    " AS w(level, idx, o) JOIN tree_nodes n USING (level, idx) ORDER BY w.o) AS edge,"
    " ARRAY(SELECT event_id FROM entries WHERE event_id = ANY(CAST(:ids AS uuid[]))) AS known")
_NODES = text("SELECT n.level, n.idx, n.hash FROM tree_nodes n "
              "JOIN unnest(CAST(:levels AS smallint[]), CAST(:idxs AS bigint[])) AS w(level, idx) USING (level, idx)")
_APPEND = text(
    "WITH e AS (INSERT INTO entries (idx, event_id, type, alert_id, causation_id, occurred_at, recorded_at, agencies, entry)"
    " SELECT idx, event_id, type, alert_id, causation_id, occurred_at, CAST(:now AS timestamptz), CAST(agencies AS text[]), entry"
    " FROM unnest(CAST(:idx AS bigint[]), CAST(:event_id AS uuid[]), CAST(:type AS text[]), CAST(:alert_id AS uuid[]),"
    " CAST(:causation_id AS uuid[]), CAST(:occurred_at AS timestamptz[]), CAST(:agencies AS text[]), CAST(:entry AS bytea[]))"
    " AS u(idx, event_id, type, alert_id, causation_id, occurred_at, agencies, entry)),"
    " n AS (INSERT INTO tree_nodes (level, idx, hash)"
    " SELECT * FROM unnest(CAST(:n_level AS smallint[]), CAST(:n_idx AS bigint[]), CAST(:n_hash AS bytea[]))),"
    " p AS (INSERT INTO payloads (idx, nonce, body, stored_at)"
    " SELECT idx, nonce, body, CAST(:now AS timestamptz) FROM unnest(CAST(:p_idx AS bigint[]), CAST(:p_nonce AS bytea[]), CAST(:p_body AS bytea[]))"
    " AS u(idx, nonce, body))"
    " SELECT 1")


async def lock_log(session: AsyncSession) -> None:
    """Hold the log's append lock until this transaction ends."""
    await session.execute(_LOCK, {"k": APPEND_LOCK})


async def lock_signing(session: AsyncSession) -> None:
    """Hold the checkpoint signer's lock until this transaction ends (appenders do not take it)."""
    await session.execute(_LOCK, {"k": SIGN_LOCK})


async def size(session: AsyncSession) -> int:
    last = await session.scalar(select(entries.c.idx).order_by(entries.c.idx.desc()).limit(1))
    return 0 if last is None else last + 1


async def head(session: AsyncSession, edge: Sequence[Node], event_ids: Sequence[UUID]) -> tuple[int, list[bytes], set[UUID]]:
    """Return, in one round trip: the log's size, the stored hashes of the nodes `edge` (in order, the
    missing ones left out), and which of `event_ids` are logged already."""
    row = (await session.execute(_HEAD, {"levels": [n[0] for n in edge], "idxs": [n[1] for n in edge],
                                         "ids": list(event_ids)})).one()
    return (0 if row.last is None else row.last + 1), list(row.edge), set(row.known)


async def node_hashes(session: AsyncSession, nodes: Collection[Node]) -> dict[Node, bytes]:
    """Fetch stored subtree hashes by (level, k), in one round trip."""
    if not nodes:
        return {}
    levels, idxs = zip(*nodes)
    rows = await session.execute(_NODES, {"levels": list(levels), "idxs": list(idxs)})
    return {(r.level, r.idx): r.hash for r in rows}


def _pg_array(items: Sequence[str]) -> str:
    """A text[] literal: arrays of arrays cannot pass through unnest, so each row's list goes as one string."""
    return "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "}"


async def append(session: AsyncSession, entry_rows: Sequence[dict], node_rows: Sequence[dict],
                 payload_rows: Sequence[dict], now: datetime) -> None:
    """Insert new entries, tree nodes and payloads in one statement, inside the session's transaction."""
    def column(rows: Sequence[dict], name: str) -> list:
        return [r[name] for r in rows]

    await session.execute(_APPEND, {
        "now": now, **{c: column(entry_rows, c) for c in ("idx", "event_id", "type", "alert_id", "causation_id",
                                                          "occurred_at", "entry")},
        "agencies": [_pg_array(r["agencies"]) for r in entry_rows],
        "n_level": column(node_rows, "level"), "n_idx": column(node_rows, "idx"), "n_hash": column(node_rows, "hash"),
        "p_idx": column(payload_rows, "idx"), "p_nonce": column(payload_rows, "nonce"), "p_body": column(payload_rows, "body"),
    })


async def entry_bytes(session: AsyncSession, start: int, end: int) -> list[tuple[int, bytes]]:
    rows = await session.execute(select(entries.c.idx, entries.c.entry)
                                 .where(entries.c.idx >= start, entries.c.idx < end).order_by(entries.c.idx))
    return [(r.idx, r.entry) for r in rows]


async def index_of_leaf(session: AsyncSession, leaf_hash: bytes) -> int | None:
    return await session.scalar(select(tree_nodes.c.idx).where(tree_nodes.c.level == 0, tree_nodes.c.hash == leaf_hash))


async def latest_checkpoint(session: AsyncSession) -> dict | None:
    row = (await session.execute(select(checkpoints).order_by(checkpoints.c.tree_size.desc()).limit(1))).mappings().first()
    return dict(row) if row else None


async def checkpoint_at(session: AsyncSession, tree_size: int) -> dict | None:
    row = (await session.execute(select(checkpoints).where(checkpoints.c.tree_size == tree_size))).mappings().first()
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
