"""How many gateway instances are live: the member count of their own Kafka consumer group.

Each instance enforces `limit / N` of every per-key rate limit, so N instances together allow
about the configured limit (assuming clients are spread over the instances, as a round-robin
proxy or the generator does), with no database or broker round trip per request.

The group (`gateway-members`) follows `routing.rules` (one partition, a handful of records). Its
assignor is round-robin, as the default, but the leader writes the member count into every
member's assignment (`user_data`), so each instance learns N at every join and leave, within the
session timeout after an instance dies.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from shared import topics
from shared.kafka import make_consumer
from shared.service import Runtime

log = logging.getLogger(__name__)
GROUP = "gateway-members"


def counting_assignor(on_count: Callable[[int], None]) -> type[RoundRobinPartitionAssignor]:
    """A round-robin assignor that also tells every member how many members the group has."""

    class Counting(RoundRobinPartitionAssignor):
        name = "blonet-counting"

        @classmethod
        def assign(cls, cluster, members):
            count = str(len(members)).encode()
            return {member: ConsumerProtocolMemberAssignment(a.version, a.assignment, count)
                    for member, a in super().assign(cluster, members).items()}

        @classmethod
        def on_assignment(cls, assignment) -> None:
            on_count(int(assignment.user_data or b"1"))

    return Counting


class Members:
    """The live instance count (1 until the group is joined, and again while Kafka is away)."""

    def __init__(self, rt: Runtime, on_change: Callable[[int], None] = lambda n: None) -> None:
        self.rt, self.on_change, self.count = rt, on_change, 1

    def _counted(self, n: int) -> None:
        if n != self.count:
            log.info("gateway instances live", extra={"instances": n})
        self.count = max(1, n)
        self.on_change(self.count)

    async def run(self) -> None:
        """Stay a member until the service stops (the supervisor restarts this after an outage)."""
        s = self.rt.settings
        consumer = make_consumer(
            s, group_id=s.topic(GROUP), enable_auto_commit=False,
            auto_offset_reset="latest", fetch_max_wait_ms=s.idle_fetch_max_wait_ms,
            partition_assignment_strategy=(counting_assignor(self._counted),))
        await consumer.start()
        try:
            consumer.subscribe([s.topic(topics.ROUTING_RULES.name)])
            while not self.rt.stopping.is_set():  # records are not needed, only the membership polling keeps
                await consumer.getmany(timeout_ms=1000)
        finally:
            self._counted(1)  # alone again: enforce the whole limit rather than a stale share
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 5)
