"""The circuit breaker and the rate limiter: pure state machines driven by an explicit clock."""
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.breaker import (Circuit, CircuitState, bucket_take, bucket_wait, circuit_after,
                                       circuit_allows, circuit_blocked, circuit_report)

THRESHOLD, COOLDOWN = 3, 10.0


def test_opens_after_threshold_probes_after_cooldown_and_closes_on_success():
    c = Circuit()
    for t in range(THRESHOLD):
        assert circuit_allows(c, t, COOLDOWN)[0]
        c = circuit_after(c, False, t, THRESHOLD)
    assert c.state is CircuitState.OPEN and c.opened_at == 2
    assert circuit_blocked(c, 2 + COOLDOWN - 0.01, COOLDOWN)
    allowed, probing = circuit_allows(c, 2 + COOLDOWN, COOLDOWN)
    assert allowed and probing.state is CircuitState.HALF_OPEN
    assert not circuit_allows(probing, 100, COOLDOWN)[0], "one probe at a time"
    assert circuit_after(probing, True, 13, THRESHOLD) == Circuit()


def test_a_failed_probe_reopens_for_another_cooldown():
    c = Circuit(CircuitState.HALF_OPEN, 3, 0)
    c = circuit_after(c, False, 50, THRESHOLD)
    assert c.state is CircuitState.OPEN and c.opened_at == 50
    assert circuit_blocked(c, 55, COOLDOWN) and not circuit_blocked(c, 60, COOLDOWN)


def test_success_resets_the_failure_count():
    c = circuit_after(circuit_after(Circuit(), False, 0, THRESHOLD), False, 1, THRESHOLD)
    c = circuit_after(c, True, 2, THRESHOLD)
    assert c == Circuit()


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5)), max_size=60))
def test_circuit_invariants(steps):
    """Never more than one probe; never an attempt while open and cooling down; a success always closes."""
    c, now = Circuit(), 0.0
    for ok, dt in steps:
        now += dt
        allowed, started = circuit_allows(c, now, COOLDOWN)
        if c.state is CircuitState.OPEN:
            assert allowed == (now - c.opened_at >= COOLDOWN)
        if c.state is CircuitState.HALF_OPEN:
            assert not allowed
        if not allowed:
            continue
        c = circuit_after(started, ok, now, THRESHOLD)
        if ok:
            assert c.state is CircuitState.CLOSED and c.failures == 0
        elif c.state is CircuitState.CLOSED:
            assert c.failures < THRESHOLD


def test_bucket_allows_a_burst_then_the_rate():
    b, taken = None, 0
    for _ in range(10):
        ok, b = bucket_take(b, 0.0, rate=2, burst=5)
        taken += ok
    assert taken == 5
    assert bucket_wait(b, 0.0, 2, 5) == 0.5
    assert bucket_take(b, 0.5, 2, 5)[0]


@given(st.lists(st.floats(0, 2), min_size=1, max_size=200), st.floats(0.5, 50), st.integers(1, 20))
def test_bucket_never_exceeds_burst_plus_rate_times_elapsed(gaps, rate, burst):
    b, now, taken = None, 0.0, 0
    for gap in gaps:
        now += gap
        ok, b = bucket_take(b, now, rate, burst)
        taken += ok
        assert taken <= burst + rate * now + 1e-9
        assert 0 <= b.tokens <= burst
        assert (bucket_wait(b, now, rate, burst) == 0) == (b.tokens >= 1)


def test_report_says_how_long_an_open_circuit_waits_before_its_probe():
    c = Circuit()
    assert circuit_report(c, 0, COOLDOWN) == {"state": "closed", "consecutive_failures": 0, "probe_in_seconds": None}
    for t in range(THRESHOLD):
        c = circuit_after(c, False, t, THRESHOLD)
    assert circuit_report(c, 5, COOLDOWN) == {"state": "open", "consecutive_failures": 3, "probe_in_seconds": 7}
    assert circuit_report(c, 50, COOLDOWN)["probe_in_seconds"] == 0, "due: the next delivery is the probe"
