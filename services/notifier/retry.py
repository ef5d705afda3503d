"""The retry schedule and the verdict on one attempt: pure, so they can be reasoned about and
tested without a clock (time is an argument)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

RETRY_AFTER_STATUSES = (429, 503)


def next_delay(attempts_made: int, schedule: Sequence[float], rng: random.Random | None = None, jitter: float = 0.2) -> float | None:
    """Return seconds to wait before the next attempt, or None when the schedule is exhausted.

    `attempts_made` counts attempts already made (the first retry follows attempt 1). The delay is
    the schedule's step for that retry, spread by ±`jitter` so failing endpoints are not hit in
    lockstep when they recover.
    """
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    base = schedule[attempts_made - 1]
    spread = (rng or random).uniform(-jitter, jitter)
    return max(0.0, base * (1 + spread))


def parse_retry_after(value: str | None, ceiling: float = 86_400) -> float | None:
    """Return the delay a Retry-After header (in seconds) asks for, capped; None if absent or a date."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), ceiling)


@dataclass(frozen=True)
class Outcome:
    """What one attempt observed: an HTTP status (None if no answer), or the transport error."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    location: str | None = None


@dataclass(frozen=True)
class Verdict:
    state: str  # delivered, pending (retry at due_at) or failed (dead letter)
    due_at: datetime | None = None
    reason: str | None = None
    disable_endpoint: bool = False


def failure_reason(outcome: Outcome) -> str | None:
    """Return why an attempt failed, in one line, or None if it succeeded (2xx)."""
    status = outcome.status
    if status is None:
        return outcome.error or "no answer"
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return f"HTTP {status}: redirect to {outcome.location or '?'} not followed"
    if status == 410:
        return "HTTP 410 Gone: endpoint disabled"
    return f"HTTP {status}"


def judge(
    outcome: Outcome, *, attempt_in_schedule: int, schedule: Sequence[float], now: datetime,
    rng: random.Random | None = None,
) -> Verdict:
    """Decide what follows an attempt: delivered, a retry at a due time, or the dead letter.

    `attempt_in_schedule` counts the attempts made since the delivery was (re)started. Only 2xx
    succeeds; 410 disables the endpoint; Retry-After on 429/503 replaces the scheduled step but
    never extends the schedule past its end.
    """
    reason = failure_reason(outcome)
    if reason is None:
        return Verdict("delivered")
    if outcome.status == 410:
        return Verdict("failed", reason=reason, disable_endpoint=True)
    delay = next_delay(attempt_in_schedule, schedule, rng)
    if delay is None:
        return Verdict("failed", reason=f"retry schedule exhausted after {attempt_in_schedule} attempts; last: {reason}")
    if outcome.status in RETRY_AFTER_STATUSES and outcome.retry_after is not None:
        delay = outcome.retry_after
    return Verdict("pending", due_at=now + timedelta(seconds=delay), reason=reason)
