"""The retry schedule."""
import random

from hypothesis import given
from hypothesis import strategies as st

from services.notifier.retry import next_delay, parse_retry_after

SCHEDULE = [1, 5, 30, 120]


def test_schedule_steps_then_gives_up():
    rng = random.Random(1)
    delays = [next_delay(n, SCHEDULE, rng, jitter=0) for n in range(1, 6)]
    assert delays == [1, 5, 30, 120, None]
    assert next_delay(0, SCHEDULE) is None


@given(st.integers(1, len(SCHEDULE)), st.integers(0, 2**32))
def test_jitter_stays_within_bounds(attempt, seed):
    d = next_delay(attempt, SCHEDULE, random.Random(seed), jitter=0.2)
    base = SCHEDULE[attempt - 1]
    assert 0.8 * base <= d <= 1.2 * base


def test_retry_after_seconds_only_and_capped():
    assert parse_retry_after("30") == 30
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("999999") == 86_400
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
