"""Per-endpoint circuit breaker and rate limiter: pure state machines, time is an argument."""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"  # deliveries flow
    OPEN = "open"  # too many consecutive failures: nothing is sent until the cooldown ends
    HALF_OPEN = "half_open"  # one probe is in flight; its outcome closes or reopens the circuit


@dataclass(frozen=True)
class Circuit:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float = 0.0


def circuit_allows(c: Circuit, now: float, cooldown: float) -> tuple[bool, Circuit]:
    """Return whether one attempt may start now, and the circuit after starting it."""
    if c.state is CircuitState.CLOSED:
        return True, c
    if c.state is CircuitState.OPEN and now - c.opened_at >= cooldown:
        return True, replace(c, state=CircuitState.HALF_OPEN)
    return False, c


def circuit_blocked(c: Circuit, now: float, cooldown: float) -> bool:
    """Return whether the circuit refuses attempts now (open and cooling down, or probing)."""
    return not circuit_allows(c, now, cooldown)[0]


def circuit_report(c: Circuit, now: float, cooldown: float) -> dict:
    """Return the circuit for people: its state, consecutive failures, and seconds until a probe may go (open only)."""
    wait = max(0.0, c.opened_at + cooldown - now) if c.state is CircuitState.OPEN else None
    return {"state": c.state.value, "consecutive_failures": c.failures, "probe_in_seconds": wait}


def circuit_after(c: Circuit, ok: bool, now: float, threshold: int) -> Circuit:
    """Return the circuit after an attempt's outcome: success closes, failures open it."""
    if ok:
        return Circuit()
    if c.state is CircuitState.HALF_OPEN:
        return Circuit(CircuitState.OPEN, c.failures + 1, now)
    failures = c.failures + 1
    if c.state is CircuitState.CLOSED and failures >= threshold:
        return Circuit(CircuitState.OPEN, failures, now)
    return replace(c, failures=failures)


@dataclass(frozen=True)
class Bucket:
    """A token bucket: `rate` tokens per second, holding at most `burst`."""

    tokens: float
    updated: float


def bucket_take(b: Bucket | None, now: float, rate: float, burst: float) -> tuple[bool, Bucket]:
    """Take one token if there is one; return whether it was taken and the bucket after."""
    if b is None:
        b = Bucket(burst, now)
    tokens = min(burst, b.tokens + max(0.0, now - b.updated) * rate)
    if tokens >= 1:
        return True, Bucket(tokens - 1, now)
    return False, Bucket(tokens, now)


def bucket_wait(b: Bucket | None, now: float, rate: float, burst: float) -> float:
    """Return seconds until a token is available (0 if one is now)."""
    if b is None:
        return 0.0
    tokens = min(burst, b.tokens + max(0.0, now - b.updated) * rate)
    return 0.0 if tokens >= 1 else (1 - tokens) / rate
