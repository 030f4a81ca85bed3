"""The circuit breaker as a pure state machine, driven by synthetic call results."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.failures.circuit import CircuitBreaker, CircuitPolicy, CircuitState

POLICY = CircuitPolicy(window_s=10, min_calls=5, failure_threshold=0.5, open_s=1, max_open_s=8)


def test_opens_on_failure_rate_in_window() -> None:
    breaker = CircuitBreaker(POLICY)
    for i in range(4):
        breaker.record(failed=(i % 2 == 0), now=i * 0.1)
    assert breaker.state is CircuitState.CLOSED  # fewer than min_calls
    breaker.record(failed=True, now=0.5)  # 3 of 5 failed
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allows(0.6)


def test_opens_on_a_slow_streak_of_failures() -> None:
    """Failures 5 s apart never fill a 10 s window to min_calls; the streak still trips it."""
    breaker = CircuitBreaker(POLICY)
    for i in range(4):
        breaker.record(failed=True, now=i * 5.0)
        assert breaker.state is CircuitState.CLOSED
    breaker.record(failed=True, now=20.0)
    assert breaker.state is CircuitState.OPEN


def test_half_open_probes_then_closes() -> None:
    breaker = CircuitBreaker(POLICY)
    for i in range(5):
        breaker.record(failed=True, now=0.0 + i * 0.01)
    assert breaker.state is CircuitState.OPEN
    assert breaker.seconds_until_probe(0.5) > 0
    assert breaker.allows(1.1) and breaker.state is CircuitState.HALF_OPEN
    assert breaker.batch_limit() == POLICY.probe_records
    breaker.record(failed=False, now=1.2)
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.record(failed=False, now=1.3)
    assert breaker.state is CircuitState.CLOSED and breaker.batch_limit() is None


def test_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    breaker = CircuitBreaker(POLICY)
    for i in range(5):
        breaker.record(failed=True, now=i * 0.01)
    now = 0.05
    waits = []
    for _ in range(6):
        wait = breaker.seconds_until_probe(now)
        waits.append(round(wait, 2))
        now += wait + 1e-6
        assert breaker.allows(now)
        breaker.record(failed=True, now=now)
    assert waits[1] == 2.0 and waits[2] == 4.0 and max(waits) == POLICY.max_open_s


def test_disabled_breaker_always_allows() -> None:
    breaker = CircuitBreaker(CircuitPolicy(enabled=False))
    for i in range(50):
        breaker.record(failed=True, now=float(i))
    assert breaker.allows(50.0) and breaker.state is CircuitState.CLOSED


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 2)), max_size=200))
def test_never_blocks_forever_and_only_opens_on_failures(calls: list[tuple[bool, float]]) -> None:
    breaker = CircuitBreaker(POLICY)
    now = 0.0
    for failed, step in calls:
        now += step
        before = breaker.state
        if breaker.allows(now):
            breaker.record(failed=failed, now=now)
        if breaker.state is CircuitState.OPEN and before is not CircuitState.OPEN:
            assert failed  # only a failure can open it
        # an open circuit always has a finite wait before the next probe
        assert breaker.seconds_until_probe(now) <= POLICY.max_open_s + 1e-6
