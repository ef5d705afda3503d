"""The audit consumer: append every event from every topic to the hash-chained log, once."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

from aiokafka.structs import ConsumerRecord

from services.audit import repository
from services.audit.chain import GENESIS, entry_hash
from shared.events import Envelope
from shared.observability import EVENTS_HANDLED
from shared.service import Runtime


class Recorder:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def __call__(self, records: Sequence[ConsumerRecord]) -> None:
        parsed = [(r, Envelope.from_bytes(r.value)) for r in records]
        async with self.rt.sessions() as session:
            index, prev = await repository.lock_head(session)
            prev = prev or GENESIS
            seen = await repository.known_event_ids(session, [e.event_id for _, e in parsed])
            rows, now = [], datetime.now(timezone.utc)
            for record, env in parsed:
                if env.event_id in seen:  # redelivered or re-produced: already in the log
                    continue
                seen.add(env.event_id)
                digest = entry_hash(prev, index, record.value)
                rows.append({
                    "idx": index, "event_id": env.event_id, "event_type": env.type.value, "alert_id": env.alert_id,
                    "thread_id": env.thread_id, "causation_id": env.causation_id, "occurred_at": env.occurred_at,
                    "topic": record.topic, "kafka_partition": record.partition, "kafka_offset": record.offset,
                    "payload": record.value, "prev_hash": prev, "entry_hash": digest, "recorded_at": now,
                })
                prev, index = digest, index + 1
                EVENTS_HANDLED.labels("audit", env.type).inc()
            await repository.append(session, rows)
            await session.commit()
