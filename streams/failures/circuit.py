"""Circuit breaker on the downstream: stop burning retry tiers when it is down.

Pure state machine; the clock is passed in. CLOSED counts apply attempts in a sliding window;
when at least ``min_calls`` attempts were made and the transient-failure share reaches
``failure_threshold`` -- or after ``min_calls`` transient failures in a row, however far
apart (a worker holding a batch retries it slowly, and a time window alone would never fill
up) -- it OPENs. While OPEN, nothing is sent downstream: the worker holds its
batch (unacked) and Faust's flow control stops fetching, i.e. consumption pauses instead of
forwarding every record to a retry topic. After ``open_s`` it goes HALF_OPEN and lets a
trickle through (one probe batch of at most ``probe_records`` at a time); ``probes_to_close``
successes in a row CLOSE it, one failure re-OPENs it for twice as long (up to ``max_open_s``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    window_s: float = 10.0
    min_calls: int = 5
    failure_threshold: float = 0.5
    open_s: float = 1.0
    max_open_s: float = 10.0
    probe_records: int = 10
    probes_to_close: int = 2
    enabled: bool = True


class CircuitBreaker:
    def __init__(self, policy: CircuitPolicy) -> None:
        self.policy = policy
        self.state = CircuitState.CLOSED
        self._calls: deque[tuple[float, bool]] = deque()  # (time, failed)
        self._opened_at = 0.0
        self._open_for = policy.open_s
        self._probe_successes = 0
        self._consecutive_failures = 0
        self.transitions = 0

    def allows(self, now: float) -> bool:
        """May a batch go downstream now? Moves OPEN -> HALF_OPEN when the wait is over."""
        if not self.policy.enabled or self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and now - self._opened_at >= self._open_for:
            self._move(CircuitState.HALF_OPEN)
            self._probe_successes = 0
        return self.state is CircuitState.HALF_OPEN

    def batch_limit(self) -> int | None:
        """Records allowed in the next downstream call (None: no limit)."""
        if self.policy.enabled and self.state is CircuitState.HALF_OPEN:
            return self.policy.probe_records
        return None

    def seconds_until_probe(self, now: float) -> float:
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._open_for - now)

    def record(self, failed: bool, now: float) -> None:
        """Report one downstream call: ``failed`` means a transient failure."""
        if not self.policy.enabled:
            return
        if self.state is CircuitState.HALF_OPEN:
            if failed:
                self._open(now, longer=True)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.policy.probes_to_close:
                self._calls.clear()
                self._open_for = self.policy.open_s
                self._move(CircuitState.CLOSED)
            return
        self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
        self._calls.append((now, failed))
        while self._calls and self._calls[0][0] < now - self.policy.window_s:
            self._calls.popleft()
        failures = sum(1 for _, f in self._calls if f)
        rate_tripped = (
            len(self._calls) >= self.policy.min_calls
            and failures / len(self._calls) >= self.policy.failure_threshold
        )
        streak_tripped = self._consecutive_failures >= self.policy.min_calls
        if failed and self.state is CircuitState.CLOSED and (rate_tripped or streak_tripped):
            self._open(now, longer=False)

    def _open(self, now: float, *, longer: bool) -> None:
        if longer:
            self._open_for = min(self._open_for * 2, self.policy.max_open_s)
        self._opened_at = now
        self._calls.clear()
        self._consecutive_failures = 0
        self._move(CircuitState.OPEN)

    def _move(self, state: CircuitState) -> None:
        if state is not self.state:
            self.state = state
            self.transitions += 1
