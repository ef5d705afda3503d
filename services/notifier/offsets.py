"""Which offsets of deliveries.requested may be committed: pure bookkeeping, no I/O.

A record handed to a queue is open until its delivery is finished (delivered, failed, or
durably parked in the retry table). A partition's offset may move to its lowest open record,
or past everything polled when none is open, so a crash never skips an unfinished record.
"""
from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition


def partition_of(key: str, partitions: int) -> int:
    """Return the partition a producer's default partitioner puts `key` on (routing keys requests by endpoint)."""
    return DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions)))


class Offsets:
    def __init__(self) -> None:
        self._open: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}  # past the last record polled
        self._given: dict[TopicPartition, int] = {}  # last offset `ready` returned

    def take(self, tp: TopicPartition, offset: int) -> None:
        self._open.setdefault(tp, set()).add(offset)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        found = self._open.get(tp)
        if found is not None:
            found.discard(offset)

    def polled(self, nexts: dict[TopicPartition, int]) -> None:
        for tp, n in nexts.items():
            self._next[tp] = max(self._next.get(tp, 0), n)

    def open_count(self) -> int:
        return sum(len(s) for s in self._open.values())

    def committable(self, tp: TopicPartition) -> int | None:
        """Return how far the partition's offset may move: its lowest open record, else past the last polled."""
        found = self._open.get(tp)
        if found:
            return min(found)
        return self._next.get(tp)

    def ready(self) -> dict[TopicPartition, int]:
        """Return the committable offsets that moved since the last call."""
        moved = {}
        for tp in self._next:
            at = self.committable(tp)
            if at is not None and at > self._given.get(tp, -1):
                moved[tp] = self._given[tp] = at
        return moved

    def forget(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Drop the partitions' state; return their committable offsets (to commit before they go)."""
        final = {tp: at for tp in partitions if (at := self.committable(tp)) is not None}
        for tp in partitions:
            self._open.pop(tp, None)
            self._next.pop(tp, None)
            self._given.pop(tp, None)
        return final
