"""The log's operations: append, sign checkpoints, prove, erase payloads.

Each function works inside the caller's session and never commits: the caller commits at the
edge (end of the batch, end of the request). Appending holds the log's advisory lock, so several
audit instances share one tree and can never fork it; signing holds a lock of its own, so
appends go on while a checkpoint is verified and signed.
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

# The signer reads and hashes entries this many at a time: the appender shares its event loop
# (the consumer in the same process), and waits at most one read and one slice of hashing.
ENTRIES_PER_READ = 1000


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


class Head:
    """The appender's Merkle frontier, kept in memory between appends.

    It is used only once the stored tree confirms it, under the append lock: the stored size and
    the stored hashes of its edge subtrees must equal it (read in the same round trip as the size).
    Otherwise another instance appended meanwhile, or this process's last append was rolled back,
    and it is loaded again from the stored edge. So instances taking turns never fork the tree and
    never skip an index, and the one appender that keeps the lock reads no tree node.
    """

    def __init__(self) -> None:
        self.frontier: Frontier | None = None
        self.reloads = 0  # how often the stored tree disagreed (another appender, a rollback, the first append)

    async def confirm(self, session: AsyncSession, event_ids: Sequence[UUID]) -> tuple[Frontier, set[UUID]]:
        """Return a copy of the frontier matching the stored tree, and which of `event_ids` are logged already."""
        mine = self.frontier
        size, stored, seen = await repository.head(session, subtrees(0, mine.size) if mine else [], event_ids)
        if mine is not None and mine.size == size and stored == mine.hashes:
            return Frontier(size, mine.hashes), seen
        self.reloads += 1
        return Frontier(size, await _edge(session, size)), seen


async def append(session: AsyncSession, drafts: Sequence[entry.Draft], now: datetime, head: Head | None = None) -> list[int]:
    """Append the drafts not logged yet (an event id is logged once); return their indexes.

    `head` is the process's appender state (a fresh one reads the tree's edge from the database)."""
    head = head or Head()
    await repository.lock_log(session)  # before reading the head: the tree cannot move under us
    frontier, seen = await head.confirm(session, [d.event_id for d in drafts])
    fresh = []
    for d in drafts:
        if d.event_id not in seen:
            seen.add(d.event_id)
            fresh.append(d)
    if not fresh:
        return []
    entry_rows, node_rows, payload_rows = [], [], []
    for index, d in enumerate(fresh, start=frontier.size):
        nonce = os.urandom(entry.NONCE_SIZE) if d.payload is not None else None
        data = entry.seal(d, index, now, nonce)
        node_rows += [{"level": level, "idx": k, "hash": h} for (level, k), h in frontier.append(leaf_hash(data))]
        entry_rows.append({"idx": index, "event_id": d.event_id, "type": d.type, "alert_id": d.alert_id,
                           "causation_id": d.causation_id, "occurred_at": d.occurred_at or now,
                           "agencies": list(d.agencies), "entry": data})
        if d.payload is not None:
            payload_rows.append({"idx": index, "nonce": nonce, "body": d.payload})
    await repository.append(session, entry_rows, node_rows, payload_rows, now)
    head.frontier = frontier  # if this transaction does not commit, the next append finds out and reloads
    return [r["idx"] for r in entry_rows]


class Verified:
    """The tree as the checkpoint signer last recomputed it from the entries' own bytes.

    Entries are append-only and read only once committed, so this frontier stays right whatever
    becomes of the transaction that computed it: the next checkpoint re-hashes only the entries
    added since."""

    def __init__(self) -> None:
        self.frontier: Frontier | None = None


async def sign_checkpoint(session: AsyncSession, key: SignerKey, origin: str, now: datetime,
                          verified: Verified | None = None) -> str:
    """Sign a checkpoint of the whole log unless the latest one already covers it; return it.

    Before signing, the entries added since the tree was last verified are hashed again from their
    bytes, and the result must match the stored nodes and prove consistent with the last signed
    root: so two signed checkpoints never contradict each other. Signers take turns on their own
    lock: appends go on meanwhile, and the checkpoint covers the log as it was when signing began.
    """
    verified = verified or Verified()
    await repository.lock_signing(session)
    size = await repository.size(session)
    latest = await repository.latest_checkpoint(session)
    signed = latest["tree_size"] if latest else 0
    if latest and size == signed:
        return latest["note"]
    if size < signed:
        raise TamperError(f"the log holds {size} entries but a checkpoint of {signed} was signed: entries were removed")
    at_signed = Frontier(signed, await _edge(session, signed))
    if latest and at_signed.root() != latest["root_hash"]:
        raise TamperError(f"the stored tree no longer matches the checkpoint signed at size {signed}")
    mine = verified.frontier
    if mine is not None and mine.size > size:
        raise TamperError(f"the log holds {size} entries but {mine.size} were verified before: entries were removed")
    # Start where this signer stopped, or at the last checkpoint (its stored edge was just checked against its root).
    frontier = Frontier(mine.size, mine.hashes) if mine is not None and mine.size >= signed else at_signed
    start = frontier.size
    for first in range(start, size, ENTRIES_PER_READ):
        for index, data in await repository.entry_bytes(session, first, min(first + ENTRIES_PER_READ, size)):
            if index != frontier.size:
                raise TamperError(f"entry {frontier.size} is missing from the log")
            frontier.append(leaf_hash(data))
    root = frontier.root()
    if frontier.size != size or Frontier(size, await _edge(session, size)).root() != root:
        raise TamperError(f"the stored tree of {size} entries does not match entries {start}..{size - 1}")
    verified.frontier = frontier
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
            "hashes": [b64(h) for h in hashes_of(ranges, hashes)], **await _checkpoint_of(session, latest, tree_size)}


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
            **await _checkpoint_of(session, latest, second)}


async def _checkpoint_of(session: AsyncSession, latest: dict, tree_size: int) -> dict:
    """The signed note of the tree a proof is for, when one was signed at exactly that size: an auditor
    holding an older checkpoint gets it back with the proof, not only one holding the latest."""
    signed = latest if latest["tree_size"] == tree_size else await repository.checkpoint_at(session, tree_size)
    return {"checkpoint": signed["note"]} if signed else {}


async def erase(session: AsyncSession, *, reason: str, actor: str, now: datetime, alert_id: UUID | None = None,
                stored_before: datetime | None = None, head: Head | None = None) -> list[int]:
    """Erase payloads (one alert's, or all stored before a time) and log the erasure; return the indexes."""
    if alert_id is None and stored_before is None:
        raise ValueError("say which payloads to erase: an alert, or a time before which they were stored")
    indexes = await repository.payload_indexes(session, alert_id=alert_id, stored_before=stored_before)
    if indexes:  # the erasure is logged first; the database deletes only what a logged erasure lists
        (logged,) = await append(session, [entry.erasure(new_id(), reason=reason, actor=actor, indexes=indexes,
                                                         alert_id=alert_id, stored_before=stored_before)], now, head)
        await repository.erase_logged_payloads(session, logged)
    return indexes
