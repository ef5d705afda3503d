"""The hash chain and causal ordering of audit entries: pure functions, no I/O.

entry_hash(n) = SHA-256( entry_hash(n-1) || n as 8 bytes big-endian || SHA-256(payload bytes) )
with entry_hash(-1) = 32 zero bytes, where the payload bytes are the Kafka record value exactly
as stored. Changing, removing or reordering any entry changes every later hash.
"""
from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

GENESIS = bytes(32)


def payload_hash(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def entry_hash(prev: bytes, index: int, payload: bytes) -> bytes:
    return hashlib.sha256(prev + index.to_bytes(8, "big") + payload_hash(payload)).digest()


@dataclass(frozen=True)
class ChainEntry:
    index: int
    payload: bytes
    prev_hash: bytes
    entry_hash: bytes


def first_break(entries: Iterable[ChainEntry], prev: bytes = GENESIS, start: int = 0) -> int | None:
    """Return the index of the first entry that breaks the chain, or None if all verify."""
    expected = start
    for e in entries:
        if e.index != expected or e.prev_hash != prev or e.entry_hash != entry_hash(prev, e.index, e.payload):
            return e.index
        prev, expected = e.entry_hash, expected + 1
    return None


def causal_order(entries: Sequence[tuple[int, UUID, UUID | None]]) -> list[int]:
    """Order (index, event id, causation id) triples so every cause precedes its effects.

    Ties (and events whose cause is outside the set) go by log index, which is arrival order.
    """
    present = {event_id for _, event_id, _ in entries}
    children: dict[UUID, list[tuple[int, UUID]]] = {}
    ready: list[tuple[int, UUID]] = []
    for index, event_id, cause in entries:
        if cause in present and cause != event_id:
            children.setdefault(cause, []).append((index, event_id))
        else:
            ready.append((index, event_id))
    heapq.heapify(ready)
    order = []
    while ready:
        index, event_id = heapq.heappop(ready)
        order.append(index)
        for child in children.pop(event_id, ()):
            heapq.heappush(ready, child)
    # Anything left sits on a causation cycle (only a forged log has one): append by index.
    order += sorted(i for kids in children.values() for i, _ in kids)
    return order
