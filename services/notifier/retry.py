"""The retry schedule: pure, so it can be reasoned about and tested without a clock."""
from __future__ import annotations

import random
from collections.abc import Sequence


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
