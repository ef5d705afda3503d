"""Deliver stored deliveries: sign per Standard Webhooks, POST, record, schedule retries.

Workers claim due rows with SKIP LOCKED leases, so several notifier instances share the work,
a crash loses nothing (the lease expires and another worker retries with the same webhook-id),
and one endpoint's deliveries run in order while a slow endpoint never holds up the others.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from services.notifier import repository
from services.notifier.retry import next_delay, parse_retry_after
from shared import topics
from shared.events import DeliveryState, DeliveryStatus, Envelope
from shared.ids import derived_id
from shared.kafka import send
from shared.observability import log_context
from shared.service import Runtime

log = logging.getLogger(__name__)
MAX_ENDPOINTS_IN_FLIGHT = 64
BATCH = 100


def signed_headers(secret: str, webhook_id: str, body: str, now: datetime) -> dict[str, str]:
    """Return the Standard Webhooks headers for one message."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }


class Deliverer:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.wake = asyncio.Event()
        self._busy: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self.http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Claim due deliveries until the service stops; wakes at once when new ones are stored."""
        timeout = aiohttp.ClientTimeout(total=self.rt.settings.webhook_timeout_seconds)
        async with aiohttp.ClientSession(timeout=timeout) as self.http:
            while not self.rt.stopping.is_set():
                if len(self._busy) < MAX_ENDPOINTS_IN_FLIGHT:
                    claimed = await self._claim()
                    for endpoint, rows in claimed.items():
                        self._busy.add(endpoint)
                        task = asyncio.create_task(self._deliver_all(endpoint, rows))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                    if claimed:
                        continue
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)  # retries fall due by time
                except asyncio.TimeoutError:
                    pass
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)

    async def _claim(self) -> dict[str, list[dict]]:
        lease = timedelta(seconds=self.rt.settings.webhook_timeout_seconds * 3 + 30)
        async with self.rt.sessions() as session:
            rows = await repository.claim_due(session, limit=BATCH, lease=lease, busy_endpoints=sorted(self._busy))
            found = await repository.secrets_by_endpoint(session, sorted({r["endpoint"] for r in rows}))
            await session.commit()
        by_endpoint: dict[str, list[dict]] = {}
        for row in rows:
            by_endpoint.setdefault(row["endpoint"], []).append({**row, "secret": found.get(row["endpoint"])})
        return by_endpoint

    async def _deliver_all(self, endpoint: str, rows: list[dict]) -> None:
        try:
            for row in rows:
                await self._attempt(row)
        except Exception:
            log.exception("delivery worker failed; the lease will expire and the delivery be retried")
        finally:
            self._busy.discard(endpoint)
            self.wake.set()

    async def _attempt(self, row: dict) -> None:
        log_context.set({"alert_id": str(row["alert_id"]), "delivery_id": str(row["delivery_id"])})
        attempt = row["attempts"] + 1
        body = orjson.dumps(row["body"]).decode()
        started = datetime.now(timezone.utc)
        headers = signed_headers(row["secret"], str(row["delivery_id"]), body, started)
        if row["traceparent"]:
            headers["traceparent"] = row["traceparent"]
        status, error, excerpt, retry_after = None, None, None, None
        t0 = time.perf_counter()
        try:
            async with self.http.post(row["url"], data=body.encode(), headers=headers) as response:
                status = response.status
                excerpt = (await response.content.read(512)).decode("utf-8", "replace")
                retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        latency_ms = (time.perf_counter() - t0) * 1000
        ok = status is not None and 200 <= status < 300
        due_at, delay = None, None
        if ok:
            state, event_state = "delivered", DeliveryState.DELIVERED
        else:
            delay = None if status == 410 else (retry_after or next_delay(attempt, self.rt.settings.retry_schedule_seconds))
            if delay is None:
                state, event_state = "failed", DeliveryState.FAILED  # dead letter
            else:
                state, event_state, due_at = "pending", DeliveryState.RETRYING, started + timedelta(seconds=delay)
        event = DeliveryStatus(
            delivery_id=row["delivery_id"], endpoint=row["endpoint"], agency=row["agency"], state=event_state,
            attempt=attempt, http_status=status, error=error or (None if ok else f"HTTP {status}"),
            latency_ms=round(latency_ms, 2), next_attempt_at=due_at,
        )
        env = Envelope.wrap(
            event, origin_node=self.rt.settings.node_id, alert_id=row["alert_id"], thread_id=row["thread_id"],
            event_id=derived_id(row["delivery_id"], "attempt", attempt), traceparent=row["traceparent"],
        )
        env.causation_id = row["request_event_id"]
        async with self.rt.sessions() as session:
            await repository.record_attempt(
                session, delivery_id=row["delivery_id"], attempt=attempt, started_at=started, latency_ms=latency_ms,
                http_status=status, error=error, excerpt=excerpt, state=state, due_at=due_at,
            )
            await repository.add_outbox(
                session, topic=self.rt.settings.topic(topics.DELIVERIES_STATUS.name), key=str(row["thread_id"]), value=env.to_bytes()
            )
            await session.commit()
        log.info("delivery attempt", extra={"endpoint": row["endpoint"], "attempt": attempt, "state": state, "http_status": status})
        await publish_outbox(self.rt)


_publish_lock = asyncio.Lock()


async def publish_outbox(rt: Runtime) -> None:
    """Publish stored status events, then mark them; a crash in between re-publishes (same event ids)."""
    async with _publish_lock:
        async with rt.sessions() as session:
            rows = await repository.claim_outbox(session)
            if not rows:
                return
            futures = []
            for row in rows:
                env = Envelope.from_bytes(row["value"])
                futures.append(await send(rt.producer, row["topic"], row["key"], env))
            await asyncio.gather(*futures)
            await repository.mark_published(session, [r["id"] for r in rows])
            await session.commit()


async def outbox_sweeper(rt: Runtime) -> None:
    """Publish anything an earlier crash or Kafka outage left in the outbox."""
    while not rt.stopping.is_set():
        try:
            await publish_outbox(rt)
        except Exception:
            log.warning("outbox publish failed; will retry", exc_info=True)
        await asyncio.sleep(1.0)
