"""The retry budget as a pure function of consumed and retried counts over a window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.failures.retry_budget import RetryBudget, RetryBudgetPolicy


def test_allows_ratio_of_consumed_plus_floor() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, window_s=60, floor=10))
    budget.on_consumed(1000, now=0.0)
    assert budget.allowance(0.0) == 210
    assert budget.try_spend(200, now=1.0)
    assert not budget.try_spend(11, now=2.0)  # all or nothing
    assert budget.try_spend(10, now=2.0)
    assert budget.allowance(3.0) == 0


def test_window_expiry_restores_the_budget() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.1, window_s=10, floor=0))
    budget.on_consumed(100, now=0.0)
    assert budget.try_spend(10, now=0.0)
    assert budget.allowance(5.0) == 0
    budget.on_consumed(100, now=11.0)  # the first 100 and the 10 retries expired
    assert budget.allowance(11.0) == 10


@given(
    st.lists(
        st.tuples(st.integers(0, 500), st.integers(0, 200), st.floats(0, 5)),
        max_size=100,
    )
)
def test_every_spend_fits_the_budget_of_its_window(
    steps: list[tuple[int, int, float]],
) -> None:
    """At the moment of each spend, retries in the window (this one included) are within
    ratio x records consumed in the window + floor. (Later, the consumption that justified a
    spend may leave the window before the spend does: the bound is checked when spending.)"""
    policy = RetryBudgetPolicy(ratio=0.2, window_s=30, floor=5)
    budget = RetryBudget(policy)
    now = 0.0
    log: list[tuple[float, int, int]] = []  # (time, consumed, retried)
    for consumed, wanted, step in steps:
        now += step
        budget.on_consumed(consumed, now)
        granted = budget.try_spend(wanted, now)
        log.append((now, consumed, wanted if granted else 0))
        in_window = [e for e in log if e[0] >= now - policy.window_s]
        limit = int(policy.ratio * sum(e[1] for e in in_window)) + policy.floor
        spent = sum(e[2] for e in in_window)
        if granted and wanted > 0:
            assert spent <= limit
        elif not granted:
            assert spent + wanted > limit  # refused only when it would not fit
