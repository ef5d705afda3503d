"""The retry schedule, and the verdict on each attempt stepped through with a controllable clock."""
import random
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from services.notifier.retry import Outcome, failure_reason, judge, next_delay, parse_retry_after

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


T0 = datetime(2026, 11, 27, tzinfo=timezone.utc)


def test_schedule_walked_with_a_controllable_clock_ends_in_the_dead_letter():
    clock, due_times = T0, []
    for attempt in range(1, len(SCHEDULE) + 2):
        verdict = judge(Outcome(500), attempt_in_schedule=attempt, schedule=SCHEDULE, now=clock, rng=random.Random(0))
        if verdict.state == "failed":
            break
        assert verdict.state == "pending" and verdict.reason == "HTTP 500"
        due_times.append(verdict.due_at)
        clock = verdict.due_at  # the next attempt happens when it falls due
    assert len(due_times) == len(SCHEDULE) and attempt == len(SCHEDULE) + 1
    gaps = [(b - a).total_seconds() for a, b in zip([T0, *due_times], due_times)]
    assert all(0.8 * s <= g <= 1.2 * s for g, s in zip(gaps, SCHEDULE))
    assert "exhausted after 5 attempts; last: HTTP 500" in verdict.reason


def test_only_2xx_delivers():
    for status in (200, 201, 204, 299):
        assert judge(Outcome(status), attempt_in_schedule=1, schedule=SCHEDULE, now=T0).state == "delivered"
    for status in (100, 301, 302, 304, 307, 400, 404, 429, 500, 503):
        assert judge(Outcome(status), attempt_in_schedule=1, schedule=SCHEDULE, now=T0).state == "pending"


def test_retry_after_replaces_the_step_on_429_and_503_only():
    for status in (429, 503):
        v = judge(Outcome(status, retry_after=42), attempt_in_schedule=1, schedule=SCHEDULE, now=T0)
        assert v.due_at == T0 + timedelta(seconds=42)
    v = judge(Outcome(500, retry_after=42), attempt_in_schedule=1, schedule=SCHEDULE, now=T0, rng=random.Random(0))
    assert v.due_at != T0 + timedelta(seconds=42)


def test_retry_after_never_extends_the_schedule():
    v = judge(Outcome(429, retry_after=1), attempt_in_schedule=len(SCHEDULE) + 1, schedule=SCHEDULE, now=T0)
    assert v.state == "failed"


def test_410_dead_letters_at_once_and_disables_the_endpoint():
    v = judge(Outcome(410), attempt_in_schedule=1, schedule=SCHEDULE, now=T0)
    assert v.state == "failed" and v.disable_endpoint and "410" in v.reason


def test_reasons_name_redirects_and_transport_errors():
    assert failure_reason(Outcome(302, location="https://elsewhere/")) == "HTTP 302: redirect to https://elsewhere/ not followed"
    assert failure_reason(Outcome(None, error="ClientConnectorError: refused")) == "ClientConnectorError: refused"
    assert failure_reason(Outcome(None)) == "no answer"


@given(st.integers(100, 599), st.integers(1, 10), st.floats(0, 1e6) | st.none())
def test_verdicts_are_consistent(status, attempt, retry_after):
    v = judge(Outcome(status, retry_after=retry_after), attempt_in_schedule=attempt, schedule=SCHEDULE, now=T0)
    assert (v.state == "delivered") == (200 <= status < 300)
    assert (v.due_at is not None) == (v.state == "pending")
    assert v.disable_endpoint == (status == 410)
    if v.state == "pending":
        assert attempt <= len(SCHEDULE) and v.due_at >= T0
