"""The retry budget as a pure function of consumed and retried counts over a window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.retry_budget import RetryBudget, RetryBudgetPolicy


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
def test_spent_retries_never_exceed_the_budget_in_any_window(
    steps: list[tuple[int, int, float]],
) -> None:
    policy = RetryBudgetPolicy(ratio=0.2, window_s=30, floor=5)
    budget = RetryBudget(policy)
    now = 0.0
    log: list[tuple[float, int, int]] = []  # (time, consumed, retried)
    for consumed, wanted, step in steps:
        now += step
        budget.on_consumed(consumed, now)
        spent = wanted if budget.try_spend(wanted, now) else 0
        log.append((now, consumed, spent))
        in_window = [e for e in log if e[0] >= now - policy.window_s]
        assert sum(e[2] for e in in_window) <= policy.ratio * sum(e[1] for e in in_window) + (
            policy.floor
        )
