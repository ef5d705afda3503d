"""An alert's story in causal order: pure functions, no I/O."""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from uuid import UUID


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
