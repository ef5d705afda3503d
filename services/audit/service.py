"""The log's operations: append, sign checkpoints, prove, erase payloads.

Each function works inside the caller's session and never commits: the caller commits at the
edge (end of the batch, end of the request). Appending and signing hold the log's advisory
lock, so several audit instances share one tree and can never fork it.
"""
from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncSession

from services.audit import entry, repository
from shared.checkpoint import Checkpoint, SignerKey, sign_note
from shared.ids import new_id
from shared.merkle import (
    Frontier, consistency_ranges, hashes_of, inclusion_ranges, leaf_hash, nodes_for, subtrees, verify_consistency,
)

ENTRIES_PER_READ = 5000


class ProofRequestError(ValueError):
    """A proof or range asked for outside the signed tree; the message says why."""


class TamperError(RuntimeError):
    """The stored log contradicts itself or a signed checkpoint: nothing more is signed."""


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


async def _edge(session: AsyncSession, size: int) -> list[bytes]:
    """Return the stored hashes of the complete subtrees that make up the tree [0, size)."""
    nodes = subtrees(0, size)
    found = await repository.node_hashes(session, nodes)
    missing = [n for n in nodes if n not in found]
    if missing:
        raise TamperError(f"stored tree nodes {missing} of a tree of {size} entries are missing")
    return [found[n] for n in nodes]


async def append(session: AsyncSession, drafts: Sequence[entry.Draft], now: datetime) -> list[int]:
    """Append the drafts not logged yet (an event id is logged once); return their indexes."""
    await repository.lock_log(session)
    size = await repository.size(session)
    seen = await repository.known_event_ids(session, [d.event_id for d in drafts])
    fresh = []
    for d in drafts:
        if d.event_id not in seen:
            seen.add(d.event_id)
            fresh.append(d)
    if not fresh:
        return []
    frontier = Frontier(size, await _edge(session, size))
    entry_rows, node_rows, payload_rows = [], [], []
    for index, d in enumerate(fresh, start=size):
        nonce = os.urandom(entry.NONCE_SIZE) if d.payload is not None else None
        data = entry.seal(d, index, now, nonce)
        node_rows += [{"level": level, "idx": k, "hash": h} for (level, k), h in frontier.append(leaf_hash(data))]
        entry_rows.append({
            "idx": index, "event_id": d.event_id, "type": d.type, "alert_id": d.alert_id, "causation_id": d.causation_id,
            "occurred_at": d.occurred_at or now, "recorded_at": now, "agencies": list(d.agencies), "entry": data,
        })
        if d.payload is not None:
            payload_rows.append({"idx": index, "nonce": nonce, "body": d.payload, "stored_at": now})
    await repository.append(session, entry_rows, node_rows, payload_rows)
    return [r["idx"] for r in entry_rows]


async def sign_checkpoint(session: AsyncSession, key: SignerKey, origin: str, now: datetime) -> str:
    """Sign a checkpoint of the whole log unless the latest one already covers it; return it.

    Before signing, the part of the tree added since the last checkpoint is derived again from
    the entries themselves and must match the stored nodes, and the stored tree must prove
    consistent with the last signed root: so two signed checkpoints never contradict each other.
    """
    await repository.lock_log(session)
    size = await repository.size(session)
    latest = await repository.latest_checkpoint(session)
    signed = latest["tree_size"] if latest else 0
    if latest and size == signed:
        return latest["note"]
    if size < signed:
        raise TamperError(f"the log holds {size} entries but a checkpoint of {signed} was signed: entries were removed")
    frontier = Frontier(signed, await _edge(session, signed))
    if latest and frontier.root() != latest["root_hash"]:
        raise TamperError(f"the stored tree no longer matches the checkpoint signed at size {signed}")
    for start in range(signed, size, ENTRIES_PER_READ):
        for index, data in await repository.entry_bytes(session, start, min(start + ENTRIES_PER_READ, size)):
            if index != frontier.size:
                raise TamperError(f"entry {frontier.size} is missing from the log")
            frontier.append(leaf_hash(data))
    root = frontier.root()
    if frontier.size != size or Frontier(size, await _edge(session, size)).root() != root:
        raise TamperError(f"the stored tree of {size} entries does not match entries {signed}..{size - 1}")
    if signed:  # every tree extends the empty one: nothing to prove from size 0
        ranges = consistency_ranges(signed, size)
        proof = hashes_of(ranges, await repository.node_hashes(session, nodes_for(ranges)))
        if not verify_consistency(signed, size, latest["root_hash"], root, proof):
            raise TamperError(f"the tree of {size} entries is not consistent with the checkpoint of {signed}")
    note = sign_note(Checkpoint(origin, size, root).text(), key)
    await repository.add_checkpoint(session, size, root, note, now)
    return note


async def _signed_size(session: AsyncSession, tree_size: int | None) -> tuple[int, dict]:
    latest = await repository.latest_checkpoint(session)
    if latest is None:
        raise ProofRequestError("no checkpoint has been signed yet")
    if tree_size is None:
        return latest["tree_size"], latest
    if tree_size > latest["tree_size"]:
        raise ProofRequestError(f"tree_size {tree_size} is beyond the latest checkpoint ({latest['tree_size']} entries)")
    return tree_size, latest


async def inclusion_proof(session: AsyncSession, *, tree_size: int | None, index: int | None = None,
                          leaf: bytes | None = None) -> dict:
    """Prove that entry `index` (or the entry whose leaf hash is `leaf`) is in the signed tree of `tree_size`."""
    tree_size, latest = await _signed_size(session, tree_size)
    if index is None:
        index = await repository.index_of_leaf(session, leaf)
        if index is None:
            raise ProofRequestError(f"no entry has the leaf hash {b64(leaf)}")
    if not 0 <= index < tree_size:
        raise ProofRequestError(f"index {index} is outside the tree of {tree_size} entries")
    ranges = inclusion_ranges(index, tree_size)
    hashes = await repository.node_hashes(session, nodes_for(ranges) | {(0, index)})
    return {"index": index, "tree_size": tree_size, "leaf_hash": b64(hashes[(0, index)]),
            "hashes": [b64(h) for h in hashes_of(ranges, hashes)], **_checkpoint_of(latest, tree_size)}


async def consistency_proof(session: AsyncSession, *, first: int, second: int | None) -> dict:
    """Prove that the signed tree of `first` entries is a prefix of the signed tree of `second`."""
    second, latest = await _signed_size(session, second)
    if first < 1:
        raise ProofRequestError("first must be at least 1: every tree extends the empty one")
    if first > second:
        raise ProofRequestError(f"first ({first}) is larger than second ({second})")
    ranges = consistency_ranges(first, second)
    hashes = await repository.node_hashes(session, nodes_for(ranges))
    return {"first": first, "second": second, "hashes": [b64(h) for h in hashes_of(ranges, hashes)],
            **_checkpoint_of(latest, second)}


def _checkpoint_of(latest: dict, tree_size: int) -> dict:
    return {"checkpoint": latest["note"]} if latest["tree_size"] == tree_size else {}


async def erase(session: AsyncSession, *, reason: str, actor: str, now: datetime, alert_id: UUID | None = None,
                stored_before: datetime | None = None) -> list[int]:
    """Erase payloads (one alert's, or all stored before a time) and log the erasure; return the indexes."""
    if alert_id is None and stored_before is None:
        raise ValueError("say which payloads to erase: an alert, or a time before which they were stored")
    indexes = await repository.payload_indexes(session, alert_id=alert_id, stored_before=stored_before)
    if indexes:  # the erasure is logged first; the database deletes only what a logged erasure lists
        (logged,) = await append(session, [entry.erasure(new_id(), reason=reason, actor=actor, indexes=indexes,
                                                         alert_id=alert_id, stored_before=stored_before)], now)
        await repository.erase_logged_payloads(session, logged)
    return indexes
