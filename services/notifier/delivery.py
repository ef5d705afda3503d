"""Deliver stored deliveries: sign per Standard Webhooks, send, record, schedule retries.

Workers claim due rows with SKIP LOCKED leases, so several notifier instances share the work,
a crash loses nothing (the lease expires and another worker retries with the same webhook-id),
and one endpoint's deliveries run in order while a slow endpoint never holds up the others.
Each endpoint has a circuit breaker and a rate limit (per instance, in memory): an endpoint
whose circuit is open or whose tokens are spent is simply not claimed, so it costs no worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone

import aiohttp
from sqlalchemy.exc import SQLAlchemyError
from standardwebhooks.webhooks import Webhook

from services.notifier import channels, egress, repository
from services.notifier.breaker import (Bucket, Circuit, CircuitState, bucket_take, bucket_wait, circuit_after, circuit_allows,
                                      circuit_blocked, circuit_report)
from services.notifier.retry import Outcome, judge
from services.notifier.service import SYSTEM_ACTOR, record_action, status_events
from shared.events import DeliveryState, Envelope
from shared import tracing
from shared.kafka import send
from shared.metrics import ACCEPT_TO_DELIVERY, DEAD_LETTERS, DELIVERIES, ENDPOINT_CIRCUIT
from shared.observability import log_context
from shared.service import Runtime

log = logging.getLogger(__name__)
MAX_ENDPOINTS_IN_FLIGHT = 64
BATCH = 100
OUTBOX_BATCH = 500
SUCCESS_GRAIN = timedelta(seconds=1)  # how stale an endpoint's last success may be in the operators' view
STATES = {"delivered": DeliveryState.DELIVERED, "pending": DeliveryState.RETRYING, "failed": DeliveryState.FAILED}


def signed_headers(
    secret: str | Sequence[str], webhook_id: str, body: str, now: datetime, content_type: str = "application/json",
) -> dict[str, str]:
    """Return the Standard Webhooks headers for one message, signed with every current secret."""
    keys = [secret] if isinstance(secret, str) else list(secret)
    return {
        "content-type": content_type,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Webhook(k).sign(webhook_id, now, body) for k in keys),
    }


def count_outcome(endpoint: str, state: DeliveryState, dead_letter_cause: str | None = None) -> None:
    """Count one recorded delivery outcome; a failure is a dead letter (refused, exhausted or gone)."""
    DELIVERIES.labels(state.value, endpoint).inc()
    if state is DeliveryState.FAILED:
        DEAD_LETTERS.labels(endpoint, dead_letter_cause).inc()


def count_attempts(results: Iterable[dict]) -> None:
    """Count durably recorded attempts by outcome; time each delivered one from the alert's acceptance to the 2xx."""
    for r in results:
        count_outcome(r["row"]["endpoint"], STATES[r["state"]], "gone" if r["disable_endpoint"] else "exhausted")
        accepted = r["row"]["body"].get("sent_at")  # the view's sent_at: when the gateway accepted the alert or forward
        if r["state"] == "delivered" and accepted:
            answered = r["started_at"] + timedelta(milliseconds=r["latency_ms"])
            ACCEPT_TO_DELIVERY.observe(max(0.0, (answered - datetime.fromisoformat(accepted)).total_seconds()))


def lease_for(timeout_seconds: float) -> timedelta:
    """Return how long a claim holds a delivery: past one attempt's timeout, so only a dead worker loses it."""
    return timedelta(seconds=timeout_seconds * 2 + 5)


class Deliverer:
    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.monotonic) -> None:
        self.rt = runtime
        self.clock = clock
        self.wake = asyncio.Event()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.circuits: dict[str, Circuit] = {}
        self.buckets: dict[str, Bucket] = {}
        self.rates: dict[str, float] = {}
        self.http: aiohttp.ClientSession | None = None
        self.attempt_log = AttemptLog(runtime)
        self.allowed = egress.allow_list(runtime.settings)

    async def run(self) -> None:
        """Claim due deliveries until the service stops; wakes at once when new ones are stored."""
        timeout = aiohttp.ClientTimeout(total=self.rt.settings.webhook_timeout_seconds)
        # The resolver refuses internal addresses too: a name cannot resolve to one after the check.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, resolver=egress.GuardedResolver(self.allowed))
        writer = asyncio.create_task(self.attempt_log.run(), name="attempt-log")
        try:
            await self._run(timeout, connector)
        finally:
            writer.cancel()

    async def _run(self, timeout: aiohttp.ClientTimeout, connector: aiohttp.TCPConnector) -> None:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as self.http:
            while not self.rt.stopping.is_set():
                self.wake.clear()  # before claiming: a wake-up during the claim must not be lost
                if len(self._busy) < MAX_ENDPOINTS_IN_FLIGHT:
                    try:
                        claimed = await self._claim()
                    except (OSError, SQLAlchemyError) as exc:  # the database is away: an outage to wait out, not an end
                        log.warning("claiming deliveries failed (%s); trying again in 1 s", type(exc).__name__)
                        await asyncio.sleep(1)
                        continue
                    for endpoint, (rows, state) in claimed.items():
                        self._busy.add(endpoint)
                        task = asyncio.create_task(self._deliver_all(endpoint, rows, state))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    if claimed:
                        continue
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.2)  # retries fall due by time
                except asyncio.TimeoutError:
                    pass
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)

    def _held_back(self) -> list[str]:
        """Return endpoints not to claim now: in flight here, circuit open, or out of tokens."""
        now, s = self.clock(), self.rt.settings
        held = set(self._busy)
        held |= {e for e, c in self.circuits.items() if circuit_blocked(c, now, s.circuit_cooldown_seconds)}
        held |= {e for e, b in self.buckets.items() if bucket_wait(b, now, self._rate(e), s.endpoint_burst) > 0}
        return sorted(held)

    def circuit(self, endpoint: str) -> dict:
        """Return this instance's circuit for an endpoint, with the wall-clock time it stays open until."""
        report = circuit_report(self.circuits.get(endpoint, Circuit()), self.clock(), self.rt.settings.circuit_cooldown_seconds)
        wait = report.pop("probe_in_seconds")
        return {**report, "open_until": None if wait is None else datetime.now(timezone.utc) + timedelta(seconds=wait)}

    def _rate(self, endpoint: str) -> float:
        return self.rates.get(endpoint) or self.rt.settings.endpoint_rate_per_second

    async def _claim(self) -> dict[str, tuple[list[dict], dict]]:
        async with self.rt.sessions() as session:
            rows = await repository.claim_due(
                session, limit=BATCH, lease=lease_for(self.rt.settings.webhook_timeout_seconds),
                busy_endpoints=self._held_back(),
            )
            found = await repository.signing_state(session, sorted({r["endpoint"] for r in rows}))
            await session.commit()
        by_endpoint: dict[str, tuple[list[dict], dict]] = {}
        for row in rows:
            state = found.get(row["endpoint"], {"secrets": [], "rate": None})
            if state["rate"]:
                self.rates[row["endpoint"]] = state["rate"]
            by_endpoint.setdefault(row["endpoint"], ([], state))[0].append(row)
        return by_endpoint

    def _may_attempt(self, endpoint: str) -> bool:
        """Take the circuit's and the rate limiter's permission for one attempt."""
        now, s = self.clock(), self.rt.settings
        allowed, circuit = circuit_allows(self.circuits.get(endpoint, Circuit()), now, s.circuit_cooldown_seconds)
        if not allowed:
            return False
        took, self.buckets[endpoint] = bucket_take(self.buckets.get(endpoint), now, self._rate(endpoint), s.endpoint_burst)
        if took:
            self._set_circuit(endpoint, circuit)
        return took

    def _set_circuit(self, endpoint: str, circuit: Circuit) -> None:
        """Keep an endpoint's circuit, and show a change of state in its gauge."""
        before = self.circuits.get(endpoint)
        self.circuits[endpoint] = circuit
        if before is None or before.state is not circuit.state:
            for state in CircuitState:
                ENDPOINT_CIRCUIT.labels(endpoint, state.value).set(1 if state is circuit.state else 0)

    async def _deliver_all(self, endpoint: str, rows: list[dict], state: dict) -> None:
        """Send an endpoint's claimed deliveries in order; their records are committed in the
        background, and the endpoint is only claimed again once all of them are durable."""
        done, recorded = 0, []
        try:
            for row in rows:
                if not self._may_attempt(endpoint):
                    break
                recorded.append(await self._attempt(row, state["secrets"]))
                done += 1
            await asyncio.gather(*recorded)
            if done < len(rows):  # circuit opened or rate limit reached: hand the rest back untouched
                async with self.rt.sessions() as session:
                    await repository.release(session, [r["delivery_id"] for r in rows[done:]])
                    await session.commit()
        except Exception:
            log.exception("delivery worker failed; the lease will expire and the delivery be retried")
        finally:
            self._busy.discard(endpoint)
            self.wake.set()

    async def _send(self, row: dict, secrets: list[str], started: datetime) -> tuple[Outcome, str | None]:
        """Make one send; whatever goes wrong in it is a failed attempt, retried on the schedule. (An
        exception let out would kill the endpoint's worker and leave the row leased, claimed again and
        again, never dead-lettered.) Only the exception's type is kept: its text may quote the alert."""
        try:
            return await self._send_checked(row, secrets, started)
        except Exception as exc:
            log.error("delivery attempt failed inside BLOnet", extra={"endpoint": row["endpoint"], "error": type(exc).__name__})
            return Outcome(None, error=f"internal error: {type(exc).__name__} while preparing or sending"), None

    async def _send_checked(self, row: dict, secrets: list[str], started: datetime) -> tuple[Outcome, str | None]:
        email = row["url"].startswith("mailto:")
        refused = None if email else await egress.check(row["url"], self.allowed)
        if refused:  # no connection made, so no response bytes from the refused host either
            return Outcome(None, error=refused), None
        body, content_type = channels.render_body(row, self.rt.settings.node_id, channels.node_key(self.rt.settings))
        headers = signed_headers(secrets, str(row["delivery_id"]), body, started, content_type)
        # A CLIENT span per attempt (tracing on), child of the stored context; the recipient gets its traceparent.
        attributes = tracing.attempt_attributes(row, email)
        with tracing.client_span("send email" if email else "POST", row["traceparent"], attributes) as span:
            traceparent = tracing.traceparent_of(span) or row["traceparent"]
            if traceparent:
                headers["traceparent"] = traceparent
            if email:
                outcome, excerpt = await channels.send_email(self.rt.settings, row, body, headers), None
            else:
                outcome, excerpt = await channels.post_webhook(self.http, row["url"], body, headers)
            tracing.attempt_outcome(span, outcome.status, outcome.error, email)
        return outcome, excerpt

    async def _attempt(self, row: dict, secrets: list[str]) -> asyncio.Future:
        """Make one attempt; return the future of its record becoming durable."""
        log_context.set({"alert_id": str(row["alert_id"]), "delivery_id": str(row["delivery_id"])})
        attempt = row["attempts"] + 1
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        outcome, excerpt = await self._send(row, secrets, started)
        latency_ms = (time.perf_counter() - t0) * 1000
        verdict = judge(outcome, attempt_in_schedule=attempt - row["schedule_start"],
                        schedule=self.rt.settings.retry_schedule_seconds, now=started)
        self._set_circuit(row["endpoint"], circuit_after(
            self.circuits.get(row["endpoint"], Circuit()), verdict.state == "delivered", self.clock(),
            self.rt.settings.circuit_failure_threshold,
        ))
        recorded = self.attempt_log.submit({
            "row": row, "delivery_id": row["delivery_id"], "attempt": attempt, "started_at": started,
            "latency_ms": latency_ms, "http_status": outcome.status, "error": outcome.error, "excerpt": excerpt,
            "state": verdict.state, "due_at": verdict.due_at, "reason": verdict.reason,
            "disable_endpoint": verdict.disable_endpoint,
        })
        log.info("delivery attempt", extra={"endpoint": row["endpoint"], "attempt": attempt, "state": verdict.state,
                                            "http_status": outcome.status, "reason": verdict.reason})
        return recorded


def endpoint_outcomes(results: list[dict], successes: dict[str, datetime]) -> list[dict]:
    """Return, per endpoint of a batch, its latest success and its latest failure with the reason.

    `successes` holds the last success this instance recorded per endpoint (none since a failure).
    A success within `SUCCESS_GRAIN` of it is left out: while an endpoint is healthy every batch
    succeeds, and an operator's view needs no finer grain than a second.
    """
    latest: dict[str, dict] = {}
    for r in results:
        seen = latest.setdefault(r["row"]["endpoint"], {"last_success_at": None, "last_failure_at": None, "last_error": None})
        if r["state"] == "delivered":
            seen["last_success_at"] = max(filter(None, (seen["last_success_at"], r["started_at"])))
        elif seen["last_failure_at"] is None or r["started_at"] > seen["last_failure_at"]:
            seen.update(last_failure_at=r["started_at"], last_error=r["reason"])
    for endpoint, seen in latest.items():
        before = successes.get(endpoint)
        if seen["last_success_at"] and not seen["last_failure_at"] and before and seen["last_success_at"] - before < SUCCESS_GRAIN:
            seen["last_success_at"] = None
    return [{"endpoint": e, **seen} for e, seen in latest.items() if seen["last_success_at"] or seen["last_failure_at"]]


class AttemptLog:
    """Group commit: the attempts of every endpoint's worker are recorded together, one
    transaction per batch, with their status events, the endpoints' last outcomes and any
    endpoint disabled by a 410.

    `submit` returns a future that completes once the attempt is durable.
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
        """Write batches until cancelled; a failed batch fails its workers (their leases then expire)."""
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < OUTBOX_BATCH:
                batch.append(self.queue.get_nowait())
            try:
                await self._write([result for result, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for _, done in batch:
                done.set_result(None)
            count_attempts(result for result, _ in batch)
            outbox_waiting.set()  # the sweeper publishes in batches; attempts never wait for Kafka

    async def _write(self, results: list[dict]) -> None:
        s = self.rt.settings
        outcomes = endpoint_outcomes(results, self.successes)
        async with self.rt.sessions() as session:
            await repository.record_attempts(session, results)
            await repository.record_endpoint_outcomes(session, outcomes)
            events = []
            for r in results:
                events += status_events(
                    s, row=r["row"], state=STATES[r["state"]], attempt=r["attempt"], http_status=r["http_status"],
                    error=r["reason"], latency_ms=round(r["latency_ms"], 2), next_attempt_at=r["due_at"],
                )
            await repository.add_outbox_rows(session, events)
            for r in (r for r in results if r["disable_endpoint"]):
                await repository.set_endpoint_enabled(session, r["row"]["endpoint"], False, r["reason"])
                await record_action(session, s, action="endpoint.disable", target=r["row"]["endpoint"],
                                    actor=SYSTEM_ACTOR, reason=r["reason"], alert_id=r["row"]["alert_id"])
            await session.commit()
        for o in outcomes:
            if o["last_failure_at"]:
                self.successes.pop(o["endpoint"], None)
            elif o["last_success_at"]:
                self.successes[o["endpoint"]] = o["last_success_at"]


_publish_lock = asyncio.Lock()
outbox_waiting = asyncio.Event()


async def publish_outbox(rt: Runtime) -> int:
    """Publish a batch of stored events, then mark them; a crash in between re-publishes (same event ids)."""
    async with _publish_lock:
        async with rt.sessions() as session:
            rows = await repository.claim_outbox(session, OUTBOX_BATCH)
            if not rows:
                return 0
            futures = [await send(rt.producer, row["topic"], row["key"], Envelope.from_bytes(row["value"])) for row in rows]
            await asyncio.gather(*futures)
            await repository.mark_published(session, [r["id"] for r in rows])
            await session.commit()
            return len(rows)


async def outbox_sweeper(rt: Runtime) -> None:
    """Publish stored events in batches as soon as attempts add them; at least once a second for
    anything an earlier crash, a Kafka outage, the consumer or the CLI left in the outbox."""
    while not rt.stopping.is_set():
        try:
            await asyncio.wait_for(outbox_waiting.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            pass
        outbox_waiting.clear()
        try:
            if await publish_outbox(rt) == OUTBOX_BATCH:
                outbox_waiting.set()  # more are waiting
        except Exception:
            log.warning("outbox publish failed; will retry", exc_info=True)
            await asyncio.sleep(1.0)
