"""A synthetic downstream to drive :class:`streams.backpressure.governor.Governor` tick by tick.

One sink thread, like the worker's: calls run back to back while there is work (a backlog),
each taking ``latency(t, records)`` seconds; the governor sees each call when it completes
(``observe_apply``) and, at each tick, the start of the call in progress (``pending_since``),
exactly what streams/backpressure/signals.py feeds it. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.backpressure.governor import (
    Decision,
    Governor,
    GovernorPolicy,
    GovernorState,
    TickSignals,
)
from streams.backpressure.lanes import Lane

Latency = Callable[[float, int], float]


@dataclass
class Downstream:
    latency: Latency
    busy: Callable[[float], bool] = lambda t: True  # is there work to send at time t?
    failing: Callable[[float], bool] = lambda t: False
    _current: tuple[float, float, int] | None = None  # (start, latency, records)
    _free_at: float = 0.0

    def advance(self, gov: Governor, t_from: float, t_to: float, records: int) -> float | None:
        """Run calls in (t_from, t_to]; returns the start of the call still running."""
        t = t_from
        for _ in range(100_000):
            if self._current is None:
                start = max(t, self._free_at)
                if start >= t_to or not self.busy(start):
                    return None
                self._current = (start, max(1e-6, self.latency(start, records)), records)
            start, latency, n = self._current
            end = start + latency
            if end > t_to:
                return start
            gov.observe_apply(latency, n, self.failing(end), end)
            self._free_at = end
            self._current = None
            t = end
        raise AssertionError("too many calls in one tick")


@dataclass
class Run:
    policy: GovernorPolicy
    downstream: Downstream
    lag: int = 1_000_000
    cpu: float = 20.0
    loop_lag: float = 0.001
    rss: int = 100 * 1024 * 1024
    gov: Governor = field(init=False)
    t: float = 0.0
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    transitions: list[tuple[float, GovernorState, GovernorState, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gov = Governor(self.policy, self.t)

    def ticks(self, count: int) -> Decision:
        decision = self.gov.decision
        for _ in range(count):
            start = self.t
            self.t = round(self.t + self.policy.tick_s, 9)
            chunk = decision.chunk(Lane.NORMAL)
            since = self.downstream.advance(self.gov, start, self.t, chunk)
            decision = self.gov.tick(
                self.t,
                TickSignals(
                    in_flight=chunk if since is not None else 0,
                    in_flight_peak=chunk,
                    consumer_lag=self.lag,
                    loop_lag_s=self.loop_lag,
                    cpu_percent=self.cpu,
                    rss_bytes=self.rss,
                    pending_since=since,
                ),
            )
            self.decisions.append((self.t, decision))
            for tr in self.gov.drain_transitions():
                self.transitions.append((tr.at, tr.source, tr.target, tr.reason))
            self.gov.drain_notes()
        return decision

    def seconds(self, seconds: float) -> Decision:
        return self.ticks(math.ceil(seconds / self.policy.tick_s - 1e-9))


def lognormal(base: float, sigma: float, rng: random.Random) -> float:
    return base * math.exp(rng.gauss(0.0, sigma)) if sigma > 0 else base
