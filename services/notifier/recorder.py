"""The group commit: every result of a few milliseconds (attempts, final states, parked retries,
refusals) is written in one transaction, its status events produced to Kafka and acknowledged
before that transaction commits.

Why this order: a result whose record is redelivered after a crash is sent again and produces the
same event ids (derived from delivery id and attempt), so an event produced before a commit that
never happened is only a duplicate; a commit without its events would let the redelivered record
be skipped as done and its events never be published. Only once `submit`'s future resolves may
the record's offset move (dispatch.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import datetime, timedelta, timezone

import orjson

from services.notifier import repository
from services.notifier.breaker import Circuit, CircuitState
from services.notifier.delivery import count_attempts, count_outcome, endpoint_outcomes, outbox_waiting
from services.notifier.service import SYSTEM_ACTOR, record_action
from shared import failures
from shared.events import DeliveryState
from shared.kafka import send
from shared.service import Runtime

log = logging.getLogger(__name__)
LINGER_SECONDS = 0.002  # gather what arrives meanwhile into the same commit
MAX_BATCH = 1000
BACKOFF_SECONDS = (0.25, 5.0)


def circuit_columns(circuit: Circuit, now: float, cooldown: float) -> dict:
    """Return a circuit as the endpoints table keeps it (the open time as a wall-clock time)."""
    until = None
    if circuit.state is CircuitState.OPEN:
        until = datetime.now(timezone.utc) + timedelta(seconds=max(0.0, circuit.opened_at + cooldown - now))
    return {"circuit_state": circuit.state.value, "consecutive_failures": circuit.failures, "circuit_open_until": until}


def db_row(row: dict) -> dict:
    return {k: (orjson.dumps(row[k]).decode() if k == "body" else row.get(k)) for k in repository.DELIVERY_COLUMNS}


class Recorder:
    """`submit(result)` queues one result; its future resolves once it is durable.

    A result: `row` (the delivery's state after it, all columns), `attempt` (the attempt's record,
    or None), `retry` (`{"due_at", "leased_until"}` to keep it in the retry queue, or None),
    `queued` (it has a retry row to delete when `retry` is None), `watch` (an acknowledgement to
    wait for), `events` ((topic, key, envelope) to produce).
    """

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.queue: asyncio.Queue[tuple[dict, asyncio.Future]] = asyncio.Queue()
        self.successes: dict[str, datetime] = {}  # see endpoint_outcomes

    def submit(self, result: dict) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((result, done))
        return done

    async def run(self) -> None:
        """Write batches until cancelled; a failed write is retried (nothing accepted is dropped)."""
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(LINGER_SECONDS)
            while not self.queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self.queue.get_nowait())
            written = await self._commit(batch)
            for _, done in written:
                if not done.done():
                    done.set_result(None)
            results = [result for result, _ in written]
            attempts = [r["attempt"] for r in results if r.get("attempt")]
            count_attempts(attempts)
            for r in results:
                if r.get("refused"):
                    count_outcome(r["row"]["endpoint"], DeliveryState.FAILED, "refused")

    async def _commit(self, batch: list[tuple[dict, asyncio.Future]]) -> list[tuple[dict, asyncio.Future]]:
        """Write the batch, retrying while the database or Kafka is away; return what was written.

        A failure while both answer means one result cannot be stored (never expected: intake
        checks each request). Then each result is written alone; one that still fails is logged and
        left unwritten, so its record's offset stays (the record is read again after a restart)
        while every other delivery goes on.
        """
        pause = BACKOFF_SECONDS[0]
        while True:
            try:
                await self._write([r for r, _ in batch])
                return batch
            except Exception as exc:  # noqa: BLE001 - classified below
                if len(batch) > 1 and not failures.transient(exc) and await self._answering():
                    written = []
                    for one in batch:
                        written += await self._commit([one])
                    return written
                if len(batch) == 1 and not failures.transient(exc) and await self._answering():
                    log.error("a delivery result cannot be stored; its record's offset stays", extra={
                        "delivery_id": str(batch[0][0]["row"]["delivery_id"]), "error_class": failures.error_class(exc),
                        "error": failures.describe(exc)})
                    return []
                log.warning("group commit failed during an outage; retrying", extra={
                    "error_class": failures.error_class(exc), "retry_in_s": pause})
                await self.rt.recover(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF_SECONDS[1])

    async def _answering(self) -> bool:
        """Return whether the database and Kafka both answer (a failure then is no outage)."""
        try:
            await self.rt._check_db()
            await self.rt._check_kafka()
            return True
        except Exception:  # noqa: BLE001 - any failure means a dependency is away
            return False

    def _crash_hook(self, results: list[dict]) -> None:
        """Test only (BLONET_NOTIFIER_CRASH_MARKER): die after POSTs, before their group commit, once."""
        marker = self.rt.settings.notifier_crash_marker
        if marker is None or marker.exists() or not any(r.get("attempt") for r in results):
            return
        marker.write_text(f"{sum(1 for r in results if r.get('attempt'))} attempts unrecorded\n")
        log.warning("test hook: SIGKILL before the group commit")
        os.kill(os.getpid(), signal.SIGKILL)

    async def _write(self, results: list[dict]) -> None:
        self._crash_hook(results)
        s = self.rt.settings
        latest = {r["row"]["delivery_id"]: r for r in results}  # a delivery's last result wins
        attempts = [r["attempt"] for r in results if r.get("attempt")]
        outcomes = endpoint_outcomes(attempts, self.successes)
        circuits = {a["row"]["endpoint"]: a["circuit"] for a in attempts}
        acks = [await send(self.rt.producer, topic, key, env) for r in results for topic, key, env in r["events"]]
        async with self.rt.sessions() as session:
            await repository.record(
                session, rows=[db_row(r["row"]) for r in latest.values()], attempts=attempts,
                retries=[{"delivery_id": i, "endpoint": r["row"]["endpoint"], **r["retry"]} for i, r in latest.items() if r["retry"]],
                finished=[i for i, r in latest.items() if r["retry"] is None and r.get("queued")],
                outcomes=[{**o, **circuits[o["endpoint"]]} for o in sorted(outcomes, key=lambda o: o["endpoint"])],
                watches=[r["watch"] for r in results if r.get("watch")],
            )
            for a in (a for a in attempts if a["disable_endpoint"]):
                await repository.set_endpoint_enabled(session, a["row"]["endpoint"], False, a["reason"])
                await record_action(session, s, action="endpoint.disable", target=a["row"]["endpoint"],
                                    actor=SYSTEM_ACTOR, reason=a["reason"], alert_id=a["row"]["alert_id"])
            await asyncio.gather(*acks)
            await session.commit()
        if any(a["disable_endpoint"] for a in attempts):
            outbox_waiting.set()
        for o in outcomes:
            if o["last_failure_at"]:
                self.successes.pop(o["endpoint"], None)
            elif o["last_success_at"]:
                self.successes[o["endpoint"]] = o["last_success_at"]
