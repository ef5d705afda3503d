"""The audit consumer: every record of every topic becomes one log entry, once."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

from aiokafka.structs import ConsumerRecord

from services.audit import entry, service
from shared.metrics import AUDIT_TREE_SIZE
from shared.observability import EVENTS_HANDLED
from shared.service import Runtime

log = logging.getLogger(__name__)


class Recorder:
    """Append a batch of records in one transaction; a malformed record is logged as rejected, never dropped."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        drafts = [entry.from_record(r.topic, r.partition, r.offset, r.value) for r in records]
        async with self.rt.sessions() as session:
            appended = await service.append(session, drafts, datetime.now(timezone.utc))
            await session.commit()
        if appended:  # appends hold the log's lock, so the last index is the tree's size less one
            AUDIT_TREE_SIZE.set(appended[-1] + 1)
        for record, draft in zip(records, drafts):
            EVENTS_HANDLED.labels("audit", draft.type).inc()
            if draft.type == entry.REJECTED:
                log.warning("rejected record logged", extra={"topic": record.topic, "partition": record.partition,
                                                             "offset": record.offset, "reason": draft.fields["reason"]})
