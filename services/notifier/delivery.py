"""Delivery helpers: Standard Webhooks signing, outcome counting, the endpoints' last outcomes,
and the outbox of operator actions (published in batches; delivery status events are produced
directly by the group commit, recorder.py).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from standardwebhooks.webhooks import Webhook

from services.notifier import repository
from shared.events import DeliveryState, Envelope
from shared.kafka import send
from shared.metrics import ACCEPT_TO_DELIVERY, DEAD_LETTERS, DELIVERIES
from shared.service import Runtime

log = logging.getLogger(__name__)
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
    """Return how long a claim (or a park while still sending) holds a delivery: past one attempt's
    timeout, so only a dead instance loses it."""
    return timedelta(seconds=timeout_seconds * 2 + 5)


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
    """Publish stored events (operator actions, and events stored before upgrade 0005) in batches as
    soon as this instance adds some, at least once a second for what another process left."""
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
