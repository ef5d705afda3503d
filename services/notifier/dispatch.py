"""Deliver straight from the consumed batch: one in-memory lane per endpoint, held by the instance
that owns the endpoint's partition of deliveries.requested (routing keys requests by endpoint).

A lane has the endpoint's queue, its circuit breaker, its rate limit and its window of requests in
flight (one, in order, by default; `in_order: false` in the directory allows
BLONET_ENDPOINT_WINDOW). Lanes never wait on each other, so a slow endpoint delays no other.
Only this instance sends to its endpoints, so breaker, rate and window hold with several instances,
with no database round trip per request.

Each consumed record stays open (its offset does not move, offsets.py) until its delivery is
finished: delivered, failed, or parked in the retry table (`retries`), durably (recorder.py). A
delivery that needs a retry later is parked; so is one in flight or waiting longer than
BLONET_PARK_AFTER_SECONDS, so one slow endpoint never holds its partition's offset. Parked
deliveries of owned endpoints are claimed back from the table with FOR UPDATE SKIP LOCKED and a
lease when due. On revocation a partition's waiting records are dropped (the new owner reads them
again from the committed offset) once its records in flight are finished.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from uuid import UUID

import aiohttp
from aiokafka.structs import TopicPartition

from services.notifier import channels, egress, escalation, repository
from services.notifier.breaker import (Bucket, Circuit, CircuitState, bucket_take, bucket_wait, circuit_after,
                                      circuit_allows)
from services.notifier.delivery import lease_for, signed_headers
from services.notifier.offsets import Offsets, partition_of
from services.notifier.recorder import Recorder, circuit_columns
from services.notifier.retry import Outcome, judge
from services.notifier.service import status_envelopes
from shared import topics, tracing
from shared.events import DeliveryState
from shared.metrics import ENDPOINT_CIRCUIT
from shared.observability import log_context
from shared.service import Runtime

log = logging.getLogger(__name__)
MAX_OPEN = 10_000  # records held in memory before the consumer waits
CLAIM_BATCH = 100
CLAIM_EVERY_SECONDS = 0.5  # how often parked deliveries are looked for (sooner when one of ours falls due)
CLAIM_GAP_SECONDS = 0.02
AGE_CHECK_SECONDS = 0.25
DIRECTORY_CHECK_SECONDS = 1.0
OVERDUE = 5  # a busy lane's queue is parked once a request in it has waited this many bounds
EXCERPT_NUL = "\ufffd"  # PostgreSQL text refuses NUL: an answer holding one must not stop the group commit
STATES = {"delivered": DeliveryState.DELIVERED, "pending": DeliveryState.RETRYING, "failed": DeliveryState.FAILED}


@dataclass(eq=False)
class Item:
    """One delivery in memory: from a consumed record (`tp`, `offset`) or claimed from the retry table."""

    row: dict
    tp: TopicPartition | None = None
    offset: int | None = None
    since: float = 0.0  # when it was consumed or claimed
    sent: float = float("inf")  # when its attempt started
    watch: dict | None = None
    queued: bool = False  # it has a row in the retry table
    open: bool = False  # its record's offset may not move yet
    open_parked: bool = False  # parked while in flight (once)


@dataclass(eq=False)
class Lane:
    endpoint: str
    waiting: deque[Item] = field(default_factory=deque)
    in_flight: set[Item] = field(default_factory=set)
    circuit: Circuit = field(default_factory=Circuit)
    bucket: Bucket | None = None
    spilled: bool = False  # waiting deliveries went to the table: newer ones follow them there (order)
    timer: asyncio.TimerHandle | None = None


class Dispatcher:
    """Lanes, the retry claims and the offset gate of the notifier's consumer (shared/kafka.py OffsetGate)."""

    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.monotonic) -> None:
        self.rt, self.s, self.clock = runtime, runtime.settings, clock
        self.offsets = Offsets()
        self.recorder = Recorder(runtime)
        self.lanes: dict[str, Lane] = {}
        self.held: dict[UUID, Item] = {}  # deliveries in memory here, by id
        self.endpoints: dict[str, dict] = {}  # the endpoints table, cached until its epoch moves
        self.epoch: int | None = None
        self.owned: set[int] = set()  # partitions of deliveries.requested assigned here
        self.partitions = topics.DELIVERIES_REQUESTED.partitions
        self._partition: dict[str, int] = {}
        self._unordered: tuple[float, set[str]] = (float("-inf"), set())
        self.http: aiohttp.ClientSession | None = None
        self.allowed = egress.allow_list(runtime.settings)
        self.wake = asyncio.Event()
        self.next_due: datetime | None = None
        self._claim_asked = False
        self._tasks: set[asyncio.Task] = set()

    # -- the endpoints' cached state ------------------------------------------------------------
    async def refresh(self, epoch: int | None = None) -> None:
        """Reload the endpoints (secrets, switches, rates) when their epoch moved (a trigger bumps it)."""
        if epoch is not None and epoch == self.epoch:
            return
        async with self.rt.engine.connect() as conn:
            self.epoch, self.endpoints = await repository.endpoint_states(conn)

    def rate(self, endpoint: str) -> float:
        return (self.endpoints.get(endpoint) or {}).get("rate_per_second") or self.s.endpoint_rate_per_second

    def window(self, endpoint: str) -> int:
        """One in flight for an in-order endpoint (the default); the configured window for one that opts out."""
        now = self.clock()
        if now - self._unordered[0] > DIRECTORY_CHECK_SECONDS:  # the directory file, looked at once a second
            try:
                found = {e.id for e in escalation.directory(self.s.network_dir).endpoints if not e.in_order}
            except (OSError, ValueError):
                found = set()
            self._unordered = (now, found)
        return self.s.endpoint_window if endpoint in self._unordered[1] else 1

    def owns(self, endpoint: str) -> bool:
        if endpoint not in self._partition:
            self._partition[endpoint] = partition_of(endpoint, self.partitions)
        return self._partition[endpoint] in self.owned

    # -- the offset gate ----------------------------------------------------------------------------
    def polled(self, nexts: dict[TopicPartition, int]) -> None:
        self.offsets.polled(nexts)

    def ready(self) -> dict[TopicPartition, int]:
        return self.offsets.ready()

    def assigned(self, partitions: set[TopicPartition]) -> None:
        self.owned |= {tp.partition for tp in partitions}
        self._ask_claim()

    async def revoke(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Drop the partitions' waiting records and wait (bounded) for those in flight to finish."""
        self.owned -= {tp.partition for tp in partitions}
        for lane in self.lanes.values():
            owned = self.owns(lane.endpoint)
            kept = deque(i for i in lane.waiting if owned and (i.tp is None or i.tp not in partitions))
            for item in lane.waiting:
                if item not in kept:
                    self._forget(item, release=True)
            lane.waiting = kept
        deadline = self.clock() + self.s.park_after_seconds + 10
        while self.clock() < deadline and any(i.open and i.tp in partitions for i in self.held.values()):
            await asyncio.sleep(0.05)
        for endpoint in [e for e, lane in self.lanes.items() if not self.owns(e) and not lane.in_flight]:
            del self.lanes[endpoint]
        return self.offsets.forget(partitions)

    def _forget(self, item: Item, release: bool) -> None:
        """Let a waiting delivery go: its record is read again by its partition's next owner; a
        claimed one is given back to the table at once."""
        self.held.pop(item.row["delivery_id"], None)
        if item.queued and release:
            self.recorder.submit(self._result(item, item.row, retry={"due_at": item.row["due_at"], "leased_until": None}))

    # -- intake -------------------------------------------------------------------------------------
    def holds(self, delivery_id: UUID) -> bool:
        return delivery_id in self.held

    def accept(self, item: Item, refused: bool = False) -> None:
        """Take a consumed delivery (its offset stays open until it is finished)."""
        item.open, item.since = True, self.clock()
        self.offsets.take(item.tp, item.offset)
        self.held[item.row["delivery_id"]] = item
        if refused:
            self._record(item, self._result(item, item.row, events=status_envelopes(
                self.s, row=item.row, state=DeliveryState.FAILED, attempt=0, error=item.row["reason"]), refused=True), final=True)
            return
        lane = self.lane(item.row["endpoint"])
        if lane.spilled or not self.endpoints.get(lane.endpoint, {}).get("enabled", True):
            self._park(item, datetime.now(timezone.utc))  # behind what is in the table, or until enabled
            return
        lane.waiting.append(item)
        self.pump(lane)

    async def room(self) -> None:
        """Wait while too many records are held (the consumer stops polling meanwhile)."""
        while self.offsets.open_count() > MAX_OPEN:
            await asyncio.sleep(0.05)

    def lane(self, endpoint: str) -> Lane:
        if endpoint not in self.lanes:
            self.lanes[endpoint] = Lane(endpoint)
            for state in CircuitState:
                ENDPOINT_CIRCUIT.labels(endpoint, state.value).set(1 if state is CircuitState.CLOSED else 0)
        return self.lanes[endpoint]

    # -- results ------------------------------------------------------------------------------------
    def _result(self, item: Item, row: dict, *, retry: dict | None = None, attempt: dict | None = None,
                events: list | None = None, refused: bool = False) -> dict:
        watch, item.watch = item.watch, None  # written once, with the first durable result
        return {"row": row, "retry": retry, "queued": item.queued, "attempt": attempt, "watch": watch,
                "events": events or [], "refused": refused}

    def _record(self, item: Item, result: dict, final: bool) -> None:
        """Hand a result to the group commit; once durable, the record's offset may move."""
        if result["retry"] is not None:
            item.queued = True
        done = self.recorder.submit(result)

        def settled(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            if item.open:
                item.open = False
                self.offsets.finish(item.tp, item.offset)
            if final:
                self.held.pop(item.row["delivery_id"], None)

        done.add_done_callback(settled)

    def _park(self, item: Item, due: datetime, lease: timedelta | None = None) -> None:
        """Put a delivery in the retry table (due then; leased by us while still in flight)."""
        row = {**item.row, "state": "pending", "due_at": due}
        until = datetime.now(timezone.utc) + lease if lease else None
        self._note_due(due)
        self._record(item, self._result(item, row, retry={"due_at": due, "leased_until": until}), final=lease is None)

    def _note_due(self, due: datetime) -> None:
        """Have the claim loop look again when `due` comes (a retry or a probe of one of ours)."""
        if due <= datetime.now(timezone.utc):
            return  # due now: claimed once its lane may send (`_ask_claim`) or by the periodic look
        if self.next_due is None or due < self.next_due:
            self.next_due = due
            self.wake.set()  # recompute the wait

    def _ask_claim(self) -> None:
        self._claim_asked = True
        self.wake.set()

    def _spill(self, lane: Lane, due: datetime) -> None:
        """Park every waiting delivery of the lane (circuit open, or waiting too long); newer follow."""
        for item in lane.waiting:
            if item.tp is None and item.queued:  # claimed from the table: give it back
                self._forget(item, release=True)
            else:
                self._park(item, due)
        lane.waiting.clear()
        lane.spilled = True

    # -- sending ------------------------------------------------------------------------------------
    def pump(self, lane: Lane) -> None:
        """Start the lane's next deliveries while its window, circuit and rate limit allow (none once
        the service stops: what waits is read again from the committed offset after the restart)."""
        window = self.window(lane.endpoint)
        while lane.waiting and len(lane.in_flight) < window and not self.rt.stopping.is_set():
            now = self.clock()
            allowed, circuit = circuit_allows(lane.circuit, now, self.s.circuit_cooldown_seconds)
            if not allowed:
                wait = max(0.0, circuit.opened_at + self.s.circuit_cooldown_seconds - now) if circuit.state is CircuitState.OPEN else 0.0
                self._spill(lane, datetime.now(timezone.utc) + timedelta(seconds=wait))
                return
            took, lane.bucket = bucket_take(lane.bucket, now, self.rate(lane.endpoint), self.s.endpoint_burst)
            if not took:
                if lane.timer is None:
                    wait = bucket_wait(lane.bucket, now, self.rate(lane.endpoint), self.s.endpoint_burst)
                    lane.timer = asyncio.get_running_loop().call_later(wait, self._retime, lane)
                return
            self._set_circuit(lane, circuit)
            item = lane.waiting.popleft()
            item.sent = now
            lane.in_flight.add(item)
            task = asyncio.create_task(self._attempt(lane, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _retime(self, lane: Lane) -> None:
        lane.timer = None
        self.pump(lane)

    def _set_circuit(self, lane: Lane, circuit: Circuit) -> None:
        before, lane.circuit = lane.circuit, circuit
        if before.state is not circuit.state:
            for state in CircuitState:
                ENDPOINT_CIRCUIT.labels(lane.endpoint, state.value).set(1 if state is circuit.state else 0)

    async def _attempt(self, lane: Lane, item: Item) -> None:
        try:
            self._attempted(lane, item, *await self._send_one(item.row))
        except Exception:  # never expected (a send's own failures are outcomes): park it, to be tried again
            log.exception("delivery attempt could not be recorded; parked for a retry")
            self._park(item, datetime.now(timezone.utc) + timedelta(seconds=5))
        finally:
            lane.in_flight.discard(item)
            self.pump(lane)
            if lane.spilled and not lane.waiting:
                self._ask_claim()  # what it parked may go now

    async def _send_one(self, row: dict) -> tuple[Outcome, str | None, datetime, float]:
        log_context.set({"alert_id": str(row["alert_id"]), "delivery_id": str(row["delivery_id"])})
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        outcome, excerpt = await self._send(row, started)
        return outcome, excerpt, started, (time.perf_counter() - t0) * 1000

    def _attempted(self, lane: Lane, item: Item, outcome: Outcome, excerpt: str | None, started: datetime, latency_ms: float) -> None:
        row, s = item.row, self.s
        attempt = row["attempts"] + 1
        verdict = judge(outcome, attempt_in_schedule=attempt - row["schedule_start"], schedule=s.retry_schedule_seconds, now=started)
        now = self.clock()
        self._set_circuit(lane, circuit_after(lane.circuit, verdict.state == "delivered", now, s.circuit_failure_threshold))
        final = verdict.state != "pending"
        new = {**row, "attempts": attempt, "state": verdict.state, "reason": verdict.reason,
               "due_at": verdict.due_at or row["due_at"], "finished_at": started if final else None}
        record = {
            "row": new, "delivery_id": row["delivery_id"], "attempt": attempt, "started_at": started,
            "latency_ms": latency_ms, "http_status": outcome.status, "error": outcome.error,
            "response_excerpt": excerpt.replace("\x00", EXCERPT_NUL) if excerpt else excerpt,
            "outcome": {"delivered": "delivered", "pending": "retrying", "failed": "failed"}[verdict.state],
            "reason": verdict.reason, "next_attempt_at": verdict.due_at, "state": verdict.state,
            "disable_endpoint": verdict.disable_endpoint,
            "circuit": circuit_columns(lane.circuit, now, s.circuit_cooldown_seconds),
        }
        events = status_envelopes(s, row=row, state=STATES[verdict.state], attempt=attempt, http_status=outcome.status,
                                  error=verdict.reason, latency_ms=round(latency_ms, 2), next_attempt_at=verdict.due_at)
        retry = None if final else {"due_at": verdict.due_at, "leased_until": None}
        if retry:
            self._note_due(verdict.due_at)
        self._record(item, self._result(item, new, retry=retry, attempt=record, events=events), final=True)
        if verdict.disable_endpoint:  # 410: the rest waits in the table until an operator enables it
            self.endpoints.setdefault(lane.endpoint, {})["enabled"] = False
            self._spill(lane, started)
        # A delivery is in the audit trail, the metrics and `blonet deliveries`: the log keeps what needs a look.
        level = logging.DEBUG if verdict.state == "delivered" else logging.INFO
        log.log(level, "delivery attempt", extra={"endpoint": row["endpoint"], "attempt": attempt, "state": verdict.state,
                                                  "http_status": outcome.status, "reason": verdict.reason})

    async def _send(self, row: dict, started: datetime) -> tuple[Outcome, str | None]:
        """Make one send; whatever goes wrong in it is a failed attempt, retried on the schedule.
        Only the exception's type is kept: its text may quote the alert."""
        try:
            return await self._send_checked(row, started)
        except Exception as exc:
            log.error("delivery attempt failed inside BLOnet", extra={"endpoint": row["endpoint"], "error": type(exc).__name__})
            return Outcome(None, error=f"internal error: {type(exc).__name__} while preparing or sending"), None

    async def _send_checked(self, row: dict, started: datetime) -> tuple[Outcome, str | None]:
        email = row["url"].startswith("mailto:")
        refused = None if email else egress.check(row["url"], self.allowed)
        if refused:  # no connection made, so no response bytes from the refused host either
            return Outcome(None, error=refused), None
        body, content_type = channels.render_body(row, self.s.node_id, channels.node_key(self.s))
        state = self.endpoints.get(row["endpoint"])
        secrets = repository.signing_secrets(state, started) if state and state.get("secret") else []
        headers = signed_headers(secrets, str(row["delivery_id"]), body, started, content_type)
        # A CLIENT span per attempt (tracing on), child of the stored context; the recipient gets its traceparent.
        attributes = tracing.attempt_attributes(row, email)
        with tracing.client_span("send email" if email else "POST", row["traceparent"], attributes) as span:
            traceparent = tracing.traceparent_of(span) or row["traceparent"]
            if traceparent:
                headers["traceparent"] = traceparent
            if email:
                outcome, excerpt = await channels.send_email(self.s, row, body, headers), None
            else:
                outcome, excerpt = await channels.post_webhook(self.http, row["url"], body, headers)
            tracing.attempt_outcome(span, outcome.status, outcome.error, email)
        return outcome, excerpt

    # -- background: parking by age, claiming due retries ---------------------------------------------
    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.s.webhook_timeout_seconds)
        # The resolver refuses internal addresses too: a name cannot resolve to one after the check.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, resolver=egress.GuardedResolver(self.allowed))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as self.http:
            background = [asyncio.create_task(self.recorder.run(), name="group-commit"),
                          asyncio.create_task(self._watch_ages(), name="park-by-age")]
            try:
                await self._claims()
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=10)
                for _ in range(50):  # let the last results reach the database
                    if self.recorder.queue.empty():
                        break
                    await asyncio.sleep(0.1)
            finally:
                for task in background:
                    task.cancel()

    async def _watch_ages(self) -> None:
        """Park what a stalled lane holds longer than the bound, so no partition's offset waits on it.

        A request in flight longer than the bound is parked (leased by us: the lease covers a crash),
        and so is everything waiting behind it; waiting requests too when the lane sends nothing
        (rate limit, circuit), or when one has waited OVERDUE × the bound however busy the lane.
        A lane that is merely busy keeps its queue for that long: it is moving, and the database
        stays off its path.
        """
        bound = self.s.park_after_seconds
        lease = lease_for(self.s.webhook_timeout_seconds)
        while True:
            await asyncio.sleep(AGE_CHECK_SECONDS)
            oldest, overdue = self.clock() - bound, self.clock() - bound * OVERDUE
            for lane in self.lanes.values():
                stalled = False
                for item in lane.in_flight:
                    if item.sent < oldest:
                        stalled = True
                        if item.open and not item.open_parked:
                            item.open_parked = True
                            self._park(item, datetime.now(timezone.utc) + lease, lease)
                limit = oldest if not lane.in_flight else overdue
                waited = any(i.open and i.since < limit for i in lane.waiting)
                if lane.waiting and (stalled or waited):
                    self._spill(lane, datetime.now(timezone.utc))

    def _held_back(self) -> list[str]:
        """Endpoints not to claim for now: window full or waiting here, circuit open, out of tokens."""
        now, held = self.clock(), []
        for e, lane in self.lanes.items():
            blocked = not circuit_allows(lane.circuit, now, self.s.circuit_cooldown_seconds)[0]
            empty = bucket_wait(lane.bucket, now, self.rate(e), self.s.endpoint_burst) > 0
            if lane.waiting or len(lane.in_flight) >= self.window(e) or blocked or empty:
                held.append(e)
        return held

    async def _claims(self) -> None:
        """Claim due parked deliveries of the endpoints this instance owns, until the service stops:
        every CLAIM_EVERY_SECONDS, when one of ours falls due, or when a lane that parked some may send."""
        while not self.rt.stopping.is_set():
            wait = CLAIM_EVERY_SECONDS
            if self.next_due is not None:
                wait = min(wait, max(0.0, (self.next_due - datetime.now(timezone.utc)).total_seconds()))
            timed_out = False
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                timed_out = True
            self.wake.clear()
            asked, self._claim_asked = self._claim_asked, False
            due = self.next_due is not None and self.next_due <= datetime.now(timezone.utc)
            if not (timed_out or asked or due):
                continue  # only an earlier due time: wait again, for it
            if due:
                self.next_due = None
            try:
                await self._claim()
            except Exception as exc:  # noqa: BLE001 - the database is away: an outage to wait out
                log.warning("claiming retries failed (%s); trying again in 1 s", type(exc).__name__)
                await asyncio.sleep(1)
            await asyncio.sleep(CLAIM_GAP_SECONDS)  # claims never crowd out the sends

    async def _claim(self) -> None:
        async with self.rt.engine.connect() as conn:
            epoch, _ = await repository.seen(conn, [])
        await self.refresh(epoch)
        owned = [e for e in self.endpoints if self.owns(e)]
        if not owned:
            return
        held = self._held_back()
        async with self.rt.sessions() as session:
            rows = await repository.claim_retries(session, owned=owned, held=held, limit=CLAIM_BATCH,
                                                  lease=lease_for(self.s.webhook_timeout_seconds))
            await session.commit()
        got = {r["endpoint"] for r in rows}
        if len(rows) < CLAIM_BATCH:  # nothing more is due for an eligible endpoint that got none: its spill is drained
            for e in set(owned) - set(held) - got:
                if e in self.lanes:
                    self.lanes[e].spilled = False
        for row in rows:
            if row["delivery_id"] in self.held:
                continue  # already here (a lease that ran out while it waited): keep the one we have
            item = Item(row=row, queued=True, since=self.clock())
            self.held[row["delivery_id"]] = item
            self.lane(row["endpoint"]).waiting.append(item)
        for e in got:
            self.pump(self.lanes[e])
        if len(rows) == CLAIM_BATCH:
            self._ask_claim()  # more may be due
