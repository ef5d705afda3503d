"""The audit consumer: every record of every topic becomes one log entry, once."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

from aiokafka.structs import ConsumerRecord

from services.audit import entry, service
from shared.kafka import deadletter_of
from shared.metrics import AUDIT_TREE_SIZE
from shared.observability import EVENTS_HANDLED
from shared.service import Runtime

log = logging.getLogger(__name__)


def deadletter_facts(record: ConsumerRecord) -> dict[str, str] | None:
    """A dead letter's headers, with the alert id the source record carried (for the alert's trail)."""
    facts = deadletter_of(record)
    if facts is not None:
        facts["alert-id"] = next((v.decode("ascii", "replace") for k, v in record.headers if k == "alert-id" and v), "")
    return facts


class Recorder:
    """Append a poll's records (every partition) in one transaction; a malformed record is logged as rejected, never dropped."""

    def __init__(self, runtime: Runtime, head: service.Head | None = None) -> None:
        self.rt, self.head = runtime, head or service.Head()

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        drafts = [entry.from_record(r.topic, r.partition, r.offset, r.value, deadletter_facts(r)) for r in records]
        async with self.rt.sessions() as session:
            appended = await service.append(session, drafts, datetime.now(timezone.utc), self.head)
            await session.commit()
        if appended:  # appends hold the log's lock, so the last index is the tree's size less one
            AUDIT_TREE_SIZE.set(appended[-1] + 1)
        for record, draft in zip(records, drafts):
            EVENTS_HANDLED.labels("audit", draft.type).inc()
            if draft.type == entry.REJECTED:
                log.warning("rejected record logged", extra={"topic": record.topic, "partition": record.partition,
                                                             "offset": record.offset, "reason": draft.fields["reason"]})
