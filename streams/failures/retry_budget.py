"""Retry budget: retries may not exceed a share of the traffic.

Over a sliding window, copies sent to retry tiers may be at most ``ratio`` of the records
consumed in that window, plus a small ``floor`` so a quiet stream can still retry. Beyond the
budget the worker does not forward: it keeps the failed records and retries them in place
(they wait, unacked) -- so a dying downstream cannot set off a retry storm. Pure; the clock
is passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryBudgetPolicy:
    ratio: float = 0.2
    window_s: float = 60.0
    floor: int = 10
    enabled: bool = True


class RetryBudget:
    def __init__(self, policy: RetryBudgetPolicy) -> None:
        self.policy = policy
        self._consumed: deque[tuple[float, int]] = deque()
        self._retried: deque[tuple[float, int]] = deque()
        self._consumed_sum = 0
        self._retried_sum = 0

    def on_consumed(self, count: int, now: float) -> None:
        self._consumed.append((now, count))
        self._consumed_sum += count

    def allowance(self, now: float) -> int:
        """How many more retry copies the window allows now."""
        if not self.policy.enabled:
            return 1 << 62
        self._expire(now)
        limit = int(self._consumed_sum * self.policy.ratio) + self.policy.floor
        return max(0, limit - self._retried_sum)

    def try_spend(self, count: int, now: float) -> bool:
        """Spend ``count`` retries if the budget allows all of them."""
        if count > self.allowance(now):
            return False
        self._retried.append((now, count))
        self._retried_sum += count
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self._consumed and self._consumed[0][0] < horizon:
            self._consumed_sum -= self._consumed.popleft()[1]
        while self._retried and self._retried[0][0] < horizon:
            self._retried_sum -= self._retried.popleft()[1]
