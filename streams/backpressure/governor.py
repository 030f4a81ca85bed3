"""The adaptive backpressure governor: a pure policy, no I/O, no clock of its own.

Feed it samples -- every downstream apply call (latency, records, failed or not) and, once per
tick, the worker's gauges (in-flight records, consumer lag, event-loop lag, CPU, RSS, the start
of the apply call in progress) -- and each ``tick`` returns the :class:`Decision` in force: the
in-flight limit, the batch size, which lanes run, the critical reserve and the pacing delay.
``streams/backpressure/signals.py`` does the feeding in a worker; the tests feed synthetic signals.
docs/backpressure.md has the design, the measurements behind it and every setting.

States, with hysteresis on every transition:

* NORMAL -> DEGRADED after ``enter_samples`` breach ticks in a row. A tick breaches when its
  latency -- the p95 of the calls completed in the tick, or the age of the call in progress if
  larger (a lower bound of its latency) -- is above ``latency_factor`` x baseline, or the
  failure rate is above ``error_rate_max``, the event loop lags more than ``loop_lag_max_s`` or
  the RSS is above ``rss_max_mb``. A latency breach run must also span ``enter_calls``
  distinct slow calls (one slow call -- a checkpoint, a GC pause -- is not a slow downstream)
  unless one call has been running for ``stall_s``. Ticks without evidence (no call completed,
  the one running still young) neither extend nor break a run. While the worker's own CPU is
  saturated (>= ``cpu_max_percent``) slow calls are not blamed on the downstream: draining a
  backlog at full speed slows the sink thread down with it (measured: 5 ms calls taking up to
  175 ms). Entering stops the bulk lane, cuts the limit (x ``degrade_backoff``) and paces the
  non-critical lanes; ``escalate_samples`` ticks above ``severe_factor`` x baseline stop the
  normal lane too. Critical always runs, with ``critical_reserve`` permits of its own.
* DEGRADED -> RECOVERY after ``recover_samples`` healthy ticks in a row: the p95 over the
  window (``window_s``, at least ``window_min_samples`` calls) and the call in progress under
  ``recover_factor`` x baseline -- a lower threshold than the entry one -- and no other breach.
  Also after ``idle_recover_s`` without any evidence (nothing completes or runs: resuming is
  how it finds out), or after ``rebaseline_s`` in DEGRADED (the downstream got slower for good:
  its small calls' median becomes the baseline).
* RECOVERY resumes the normal lane at once and the bulk lane after ``resume_step_samples``
  calm ticks, and returns to NORMAL after ``settle_samples`` more; a sustained breach sends it
  back to DEGRADED -- for latency, above ``severe_factor`` x baseline only: recovery drains the
  backlog the spike left, and that load alone slows the sink thread (probation). Nothing can
  stay stopped: without a breach every path leads to NORMAL.

The limit (AIMD around the knee): in NORMAL and RECOVERY it grows by ``increase_step`` per
tick while the median of the tick's big calls stays within ``knee_factor`` x baseline *and*
there is work for it (consumer lag >= ``backlog_records`` and the in-flight peak reached
``saturation`` of what the non-critical lanes may hold) *and* CPU and event loop have room;
it shrinks by ``knee_backoff`` (at most once per ``decrease_interval_samples`` ticks) when that
median passes ``knee_factor`` x baseline -- when a bigger batch no longer buys throughput, only
latency. With ``latency = a + b x batch`` that stops where ``b x batch ~ a``, Kleinrock's
optimal operating point for ``knee_factor = 2``.

The baseline is the median latency of *small* calls (at most ``limit_min`` records) seen on
calm NORMAL ticks -- not of all calls, or the limit's own growth would raise the baseline and
the limit would drift up without end. Every ``probe_interval_s`` the batch size drops to
``limit_min`` for ``probe_samples`` ticks so that small calls exist even under a backlog.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from streams.backpressure.lanes import ALL_LANES, Lane


class GovernorState(StrEnum):
    NORMAL = "normal"
    DEGRADED = "degraded"
    RECOVERY = "recovery"


STATE_CODES: dict[GovernorState, int] = {
    GovernorState.NORMAL: 0,
    GovernorState.DEGRADED: 1,
    GovernorState.RECOVERY: 2,
}


@dataclass(frozen=True, slots=True)
class GovernorPolicy:
    """Every threshold; the defaults match ``RECON_GOVERNOR_*`` in streams/settings.py."""

    tick_s: float = 0.1
    window_s: float = 1.0
    window_min_samples: int = 10
    latency_factor: float = 10.0
    enter_samples: int = 4
    enter_calls: int = 2
    stall_s: float = 2.0
    severe_factor: float = 20.0
    escalate_samples: int = 5
    recover_factor: float = 4.0
    recover_samples: int = 10
    resume_step_samples: int = 5
    settle_samples: int = 10
    idle_recover_s: float = 5.0
    rebaseline_s: float = 300.0
    error_rate_max: float = 0.2
    error_window_s: float = 5.0
    error_min_calls: int = 10
    loop_lag_max_s: float = 0.5
    cpu_max_percent: float = 90.0
    rss_max_mb: float = 0.0
    limit_min: int = 50
    limit_max: int = 2000
    limit_initial: int = 500
    batch_max: int = 1000
    critical_reserve: int = 25
    increase_step: int = 25
    knee_factor: float = 2.0
    knee_backoff: float = 0.9
    degrade_backoff: float = 0.5
    decrease_interval_samples: int = 10
    saturation: float = 0.8
    backlog_records: int = 100
    baseline_samples: int = 50
    warmup_samples: int = 5
    probe_interval_s: float = 30.0
    probe_samples: int = 3
    pacing_factor: float = 1.0
    pacing_max_s: float = 1.0

    def __post_init__(self) -> None:
        problems = policy_problems(self)
        if problems:
            raise ValueError("; ".join(problems))


def policy_problems(p: GovernorPolicy) -> list[str]:
    """Cross-field constraints (single-field ranges are checked by Settings)."""
    problems = []
    if not p.limit_min <= p.limit_initial <= p.limit_max:
        problems.append("need limit_min <= limit_initial <= limit_max")
    if not 0 <= p.critical_reserve < p.limit_min:
        problems.append("need 0 <= critical_reserve < limit_min")
    if not 1.0 <= p.recover_factor < p.latency_factor:
        problems.append("need 1 <= recover_factor < latency_factor (hysteresis)")
    if not 1.0 < p.knee_factor <= p.recover_factor:
        problems.append("need 1 < knee_factor <= recover_factor")
    if p.severe_factor < p.latency_factor:
        problems.append("need severe_factor >= latency_factor")
    if p.batch_max < 1 or p.tick_s <= 0:
        problems.append("need batch_max >= 1 and tick_s > 0")
    return problems


@dataclass(frozen=True, slots=True)
class Decision:
    """What the worker enforces until the next tick."""

    state: GovernorState
    limit: int  # max records in flight, all lanes together
    batch_size: int  # max records per apply call
    lanes: frozenset[Lane]  # lanes that run (critical always does)
    critical_reserve: int  # permits only the critical lane may use
    pacing_s: float  # delay before each non-critical chunk
    level: int = 0  # DEGRADED: 1 bulk stopped, 2 normal stopped too

    def runs(self, lane: Lane) -> bool:
        return lane in self.lanes

    def cap(self, lane: Lane) -> int:
        """The in-flight total a chunk of ``lane`` may bring about."""
        return self.limit if lane is Lane.CRITICAL else self.limit - self.critical_reserve

    def chunk(self, lane: Lane) -> int:
        return max(1, min(self.batch_size, self.cap(lane)))


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    source: GovernorState
    target: GovernorState
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class TickSignals:
    """The worker's gauges at one tick."""

    in_flight: int = 0
    in_flight_peak: int = 0
    consumer_lag: int = 0
    loop_lag_s: float = 0.0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    pending_since: float | None = None  # start (same clock) of the oldest call still running


@dataclass(frozen=True, slots=True)
class TickStats:
    """What the last tick computed (for the trace, metrics and logs)."""

    p50_s: float | None = None
    p95_s: float | None = None
    estimate_s: float | None = None
    baseline_s: float | None = None
    error_rate: float | None = None
    breach: str = ""  # reason of the breach this tick, "" if none
    run: int = 0  # breach ticks in a row
    run_calls: int = 0  # distinct slow calls in that run
    healthy: bool = False
    evidence: bool = False
    probing: bool = False
    saturated: bool = False  # worker CPU >= cpu_max_percent: slow calls were not counted


@dataclass(slots=True)
class _Sample:
    at: float
    latency_s: float
    records: int


@dataclass(slots=True)
class _Runs:
    breach: int = 0
    calls: set[float] = field(default_factory=set)  # start times of the slow calls in the run
    stalled: bool = False  # one call of the run has been running for >= stall_s
    healthy: int = 0  # DEGRADED: healthy ticks in a row; RECOVERY: calm ticks in a row
    severe: int = 0
    since_decrease: int = 0

    def reset_breach(self) -> None:
        self.breach = 0
        self.calls.clear()
        self.stalled = False


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of a non-empty sorted list."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Governor:
    """The policy's state. Not thread-safe: one caller (the worker's signal task)."""

    def __init__(self, policy: GovernorPolicy, now: float) -> None:
        self.policy = policy
        self.state = GovernorState.NORMAL
        self.level = 0
        self.resume_step = 0
        self.limit = policy.limit_initial
        self.baseline: float | None = None
        self.stats = TickStats()
        self._samples: deque[_Sample] = deque()
        self._fresh: list[_Sample] = []
        self._warm: list[float] = []
        self._small: deque[float] = deque(maxlen=policy.baseline_samples)
        self._degraded_small: deque[float] = deque(maxlen=policy.baseline_samples)
        self._calls: deque[tuple[float, bool]] = deque()
        self._runs = _Runs()
        self._state_since = now
        self._last_evidence = now
        self._cpu = 0.0
        self._probe_left = policy.probe_samples  # measure the baseline first
        self._last_probe = now
        self._transitions: list[Transition] = []
        self._notes: list[str] = []
        self._decision = self._decide(pacing_s=0.0)

    # --- inputs ------------------------------------------------------------------------------

    def observe_apply(self, latency_s: float, records: int, failed: bool, now: float) -> None:
        """One downstream apply call finished (``failed``: it raised)."""
        self._calls.append((now, failed))
        if failed:
            return  # a refused call is fast: its latency says nothing good about health
        latency_s = max(0.0, latency_s)
        sample = _Sample(now, latency_s, records)
        self._samples.append(sample)
        self._fresh.append(sample)
        if self.baseline is None and len(self._warm) < self.policy.warmup_samples:
            self._warm.append(latency_s)

    def drain_transitions(self) -> list[Transition]:
        transitions, self._transitions = self._transitions, []
        return transitions

    def drain_notes(self) -> list[str]:
        """Lane escalations and resumes since the last call (for the log)."""
        notes, self._notes = self._notes, []
        return notes

    @property
    def decision(self) -> Decision:
        return self._decision

    # --- the tick ----------------------------------------------------------------------------

    def tick(self, now: float, signals: TickSignals) -> Decision:
        p = self.policy
        fresh, self._fresh = self._fresh, []
        window = self._window(now)
        recent = bool(window) and self._samples[-1].at >= now - p.window_s
        p50 = quantile(window, 0.5) if window else None
        p95 = quantile(window, 0.95) if window else None
        # The knee is about big calls: the median of this tick's calls above limit_min records
        # (the many small critical calls would hide what a bigger batch costs; older calls were
        # made at another limit).
        large = sorted(s.latency_s for s in fresh if s.records > p.limit_min)
        if not large:  # at a small limit every call is small: judge by them
            large = sorted(s.latency_s for s in fresh)
        knee_p50 = quantile(large, 0.5) if large else None
        since = signals.pending_since
        pending = max(0.0, now - since) if since is not None else None
        # Entry evidence is per tick: the p95 of the calls that completed in this tick, or the
        # age of the call still running if larger (a lower bound of its latency).
        tick_latency: float | None = None
        fresh_p95 = quantile(sorted(s.latency_s for s in fresh), 0.95) if fresh else None
        if fresh_p95 is not None or pending is not None:
            tick_latency = max(fresh_p95 or 0.0, pending or 0.0)
        self._update_baseline()
        base = self.baseline
        error_rate = self._error_rate(now)
        runs = self._runs
        # A tick is a breach (slow calls completed, or the call in progress is already slow),
        # calm (calls completed, none slow, nothing slow in progress) or neutral (no call
        # completed and the one in progress, if any, is still young): neutral ticks neither
        # extend nor break a run.
        slow = p.latency_factor * base if base is not None else math.inf
        if self.state is GovernorState.RECOVERY and base is not None:
            # Probation: recovery drains the backlog the spike left, and that load slows the
            # sink thread itself (measured: 100-300 ms calls at 5 ms downstream latency on a
            # busy host); only a severe slowdown -- the spike coming back -- counts here.
            slow = p.severe_factor * base
        calm = fresh_p95 is not None and tick_latency is not None and tick_latency <= slow
        # While the worker itself is out of CPU (draining a backlog at full speed, say) its
        # sink calls slow down with it: that says nothing about the downstream, so slow calls
        # are neutral then (the knee rule still stops the limit from growing).
        self._cpu = 0.5 * self._cpu + 0.5 * signals.cpu_percent
        saturated = max(self._cpu, signals.cpu_percent) >= p.cpu_max_percent
        breach = ""
        if tick_latency is not None and tick_latency > slow and saturated:
            calm = False
        elif tick_latency is not None and tick_latency > slow:
            breach = "latency"
            runs.calls.update(round(s.at - s.latency_s, 4) for s in fresh if s.latency_s > slow)
            if since is not None and pending is not None and pending > slow:
                runs.calls.add(round(since, 4))
                runs.stalled = runs.stalled or pending >= p.stall_s
        elif error_rate is not None and error_rate > p.error_rate_max:
            breach = "errors"
        elif signals.loop_lag_s > p.loop_lag_max_s:
            breach = "loop_lag"
        elif p.rss_max_mb > 0 and signals.rss_bytes > p.rss_max_mb * 1024 * 1024:
            breach = "memory"
        if breach or calm:
            self._last_evidence = now
        # The baseline learns from small calls of calm NORMAL ticks only (never from a
        # breach run that has not yet changed the state); DEGRADED keeps its own for rebaseline.
        small = [s.latency_s for s in fresh if s.records <= p.limit_min]
        if small and self.state is GovernorState.NORMAL and (calm or base is None):
            self._small.extend(small)
        elif small and self.state is GovernorState.DEGRADED:
            self._degraded_small.extend(small)
        # Exit evidence is the whole window (>= window_s, >= window_min_samples calls): its
        # p95 -- and the call in progress -- must be under the lower recover threshold.
        settled = max(p95 if recent and p95 is not None else 0.0, pending or 0.0)
        evidence = recent or pending is not None
        healthy = (
            base is not None
            and evidence
            and not breach
            and settled <= p.recover_factor * base
            and (error_rate is None or error_rate <= p.error_rate_max / 2)
        )
        severe = breach in ("errors", "memory") or (
            breach == "latency"
            and base is not None
            and tick_latency is not None
            and tick_latency > p.severe_factor * base
        )
        probing = self._probing(now, observed=bool(fresh))
        if base is None:  # warming up: no judgement without a baseline
            self.stats = TickStats(p50, p95, tick_latency, base, error_rate, probing=probing)
            self._decision = self._decide(pacing_s=0.0, probing=probing)
            return self._decision

        runs.since_decrease += 1
        stale = now - self._last_evidence >= p.window_s
        if breach:
            runs.breach += 1
        elif calm or stale:
            runs.reset_breach()  # a calm tick, or evidence too old to chain with
        if severe:
            runs.severe += 1
        elif calm or stale or (breach and breach != "latency"):
            runs.severe = 0  # (the first ticks of each slow call are slow, not yet severe)
        if self.state is GovernorState.RECOVERY:
            runs.healthy = 0 if breach else runs.healthy + 1  # calm ticks move it on
        elif healthy:
            runs.healthy += 1
        elif evidence or breach:
            runs.healthy = 0
        self.stats = TickStats(
            p50,
            p95,
            tick_latency,
            base,
            error_rate,
            breach,
            runs.breach,
            len(runs.calls),
            healthy,
            evidence,
            probing,
            saturated,
        )

        if self.state is GovernorState.NORMAL:
            self._normal_tick(now, breach, knee_p50, signals, probing)
        elif self.state is GovernorState.DEGRADED:
            self._degraded_tick(now, breach, evidence)
        else:
            self._recovery_tick(now, breach, knee_p50, signals)
        pacing = 0.0
        if self.state is GovernorState.DEGRADED:
            basis = p50 if p50 is not None else (tick_latency or 0.0)
            pacing = min(p.pacing_max_s, p.pacing_factor * basis)
        self._decision = self._decide(pacing_s=pacing, probing=probing)
        return self._decision

    def _sustained(self, breach: str) -> bool:
        """A breach run long enough to act on: ``enter_samples`` ticks and, for latency,
        ``enter_calls`` distinct slow calls (one slow call -- a checkpoint, a GC pause -- is
        not a slow downstream) or one call stalled for ``stall_s``."""
        runs = self._runs
        if not breach or runs.breach < self.policy.enter_samples:
            return False
        if breach != "latency":
            return True
        return len(runs.calls) >= self.policy.enter_calls or runs.stalled

    # --- per state ---------------------------------------------------------------------------

    def _normal_tick(
        self,
        now: float,
        breach: str,
        p50: float | None,
        signals: TickSignals,
        probing: bool,
    ) -> None:
        if self._sustained(breach):
            self._degrade(now, breach)
            return
        if not probing:
            self._steer_limit(p50, signals)

    def _degraded_tick(self, now: float, breach: str, evidence: bool) -> None:
        p = self.policy
        runs = self._runs
        if breach and runs.since_decrease >= p.decrease_interval_samples:
            self._cut(p.degrade_backoff)
        if self.level == 1 and runs.severe >= p.escalate_samples:
            self.level = 2
            self._notes.append(f"escalated: normal lane stopped ({self._describe()})")
        if runs.healthy >= p.recover_samples:
            self._move(now, GovernorState.RECOVERY, "recovered", self._describe())
        elif not evidence and now - self._last_evidence >= p.idle_recover_s:
            self._move(now, GovernorState.RECOVERY, "idle", "no apply call for a while")
        elif now - self._state_since >= p.rebaseline_s and len(self._degraded_small) >= 3:
            # A new steady level: the small calls made while degraded are the new baseline.
            self.baseline = statistics.median(self._degraded_small)
            self._small.clear()
            self._small.extend(self._degraded_small)
            self._move(now, GovernorState.RECOVERY, "rebaseline", self._describe())

    def _recovery_tick(
        self, now: float, breach: str, p50: float | None, signals: TickSignals
    ) -> None:
        p = self.policy
        runs = self._runs
        if self._sustained(breach):
            self._degrade(now, breach)
            return
        if not breach:
            self._steer_limit(p50, signals, recovering=True)
        if self.resume_step == 0 and runs.healthy >= p.resume_step_samples:
            self.resume_step = 1
            runs.healthy = 0
            self._notes.append("bulk lane resumed")
        elif self.resume_step == 1 and runs.healthy >= p.settle_samples:
            self._move(now, GovernorState.NORMAL, "settled", self._describe())

    # --- the limit ---------------------------------------------------------------------------

    def _steer_limit(
        self, p50: float | None, signals: TickSignals, *, recovering: bool = False
    ) -> None:
        p = self.policy
        base = self.baseline
        if base is None or p50 is None:
            return
        if p50 > p.knee_factor * base:
            if self._runs.since_decrease >= p.decrease_interval_samples:
                self._cut(p.knee_backoff)
            return
        room = (
            signals.cpu_percent < p.cpu_max_percent and signals.loop_lag_s <= p.loop_lag_max_s / 2
        )
        busy = signals.consumer_lag >= p.backlog_records and signals.in_flight_peak >= (
            p.saturation * (self.limit - p.critical_reserve)
        )
        below_start = recovering and self.limit < p.limit_initial
        if room and (busy or below_start):
            self.limit = min(p.limit_max, self.limit + p.increase_step)

    def _cut(self, factor: float) -> None:
        self.limit = max(self.policy.limit_min, int(self.limit * factor))
        self._runs.since_decrease = 0

    # --- helpers -----------------------------------------------------------------------------

    def _degrade(self, now: float, reason: str) -> None:
        self.level = 1
        self._degraded_small.clear()
        self._cut(self.policy.degrade_backoff)
        self._move(now, GovernorState.DEGRADED, reason or "latency", self._describe())

    def _move(self, now: float, target: GovernorState, reason: str, detail: str) -> None:
        self._transitions.append(Transition(now, self.state, target, reason, detail))
        if target is GovernorState.RECOVERY:
            self.level = 0
            self.resume_step = 0
        if target is GovernorState.NORMAL:
            self._last_probe = now  # a fresh window of small calls before the next probe
        self.state = target
        self._state_since = now
        self._runs.reset_breach()
        self._runs.healthy = 0
        self._runs.severe = 0

    def _describe(self) -> str:
        s = self.stats
        parts = [f"limit={self.limit}"]
        if s.baseline_s is not None:
            parts.append(f"baseline={s.baseline_s * 1000:.1f}ms")
        if s.p95_s is not None:
            parts.append(f"p95={s.p95_s * 1000:.1f}ms")
        if s.estimate_s is not None:
            parts.append(f"estimate={s.estimate_s * 1000:.1f}ms")
        if s.error_rate is not None:
            parts.append(f"errors={s.error_rate:.0%}")
        return " ".join(parts)

    def _lanes(self) -> frozenset[Lane]:
        if self.state is GovernorState.DEGRADED:
            if self.level >= 2:
                return frozenset({Lane.CRITICAL})
            return frozenset({Lane.CRITICAL, Lane.NORMAL})
        if self.state is GovernorState.RECOVERY and self.resume_step == 0:
            return frozenset({Lane.CRITICAL, Lane.NORMAL})
        return ALL_LANES

    def _decide(self, *, pacing_s: float, probing: bool = False) -> Decision:
        p = self.policy
        batch = p.limit_min if probing else min(self.limit, p.batch_max)
        return Decision(
            state=self.state,
            limit=self.limit,
            batch_size=max(1, batch),
            lanes=self._lanes(),
            critical_reserve=p.critical_reserve,
            pacing_s=pacing_s,
            level=self.level if self.state is GovernorState.DEGRADED else 0,
        )

    def _window(self, now: float) -> list[float]:
        """Sorted latencies of the last ``window_s`` seconds, or of the last
        ``window_min_samples`` calls if the window holds fewer (a p95 of three samples is their
        maximum); never older than ``max(window_s, idle_recover_s)``."""
        p = self.policy
        samples = self._samples
        horizon = now - p.window_s
        while len(samples) > p.window_min_samples and samples[0].at < horizon:
            samples.popleft()
        while samples and samples[0].at < now - max(p.window_s, p.idle_recover_s):
            samples.popleft()  # never judge on samples older than this, however few
        return sorted(s.latency_s for s in samples)

    def _update_baseline(self) -> None:
        if self.baseline is None:
            if self._small and len(self._small) >= min(3, self.policy.warmup_samples):
                self.baseline = statistics.median(self._small)
            elif len(self._warm) >= self.policy.warmup_samples:
                self.baseline = statistics.median(self._warm)
            return
        if self.state is GovernorState.NORMAL and self._small:
            self.baseline = statistics.median(self._small)

    def _error_rate(self, now: float) -> float | None:
        calls = self._calls
        while calls and calls[0][0] < now - self.policy.error_window_s:
            calls.popleft()
        if len(calls) < self.policy.error_min_calls:
            return None
        return sum(1 for _, failed in calls if failed) / len(calls)

    def _probing(self, now: float, *, observed: bool) -> bool:
        """Is this a probe tick (batch size ``limit_min``, to measure the baseline)? A probe
        lasts ``probe_samples`` ticks that saw calls complete."""
        p = self.policy
        if self.state is not GovernorState.NORMAL:
            return False
        if self._probe_left <= 0 and now - self._last_probe >= p.probe_interval_s:
            self._probe_left = p.probe_samples
        if self._probe_left > 0:
            if observed:
                self._probe_left -= 1
            self._last_probe = now
            return True
        return False
