"""The governor with synthetic signals: detection, no flapping, the knee, recovery, invariants."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from streams.backpressure.controller import policy_from_settings
from streams.backpressure.governor import (
    Decision,
    Governor,
    GovernorPolicy,
    GovernorState,
    TickSignals,
    quantile,
)
from streams.backpressure.lanes import ALL_LANES, Lane
from streams.settings import Settings
from tests.streams.backpressure.governor_sim import Downstream, Run, lognormal

N = GovernorState.NORMAL
D = GovernorState.DEGRADED
R = GovernorState.RECOVERY
POLICY = GovernorPolicy()
SLOW = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: long runs
    suppress_health_check=[HealthCheck.too_slow],
)


def steady(base: float, sigma: float = 0.0, seed: int = 0) -> Downstream:
    rng = random.Random(seed)
    return Downstream(lambda t, n: lognormal(base, sigma, rng))


# --- policy and settings ---------------------------------------------------------------------


def test_policy_defaults_are_the_settings_defaults() -> None:
    assert policy_from_settings(Settings()) == GovernorPolicy()


@pytest.mark.parametrize(
    "change",
    [
        {"limit_initial": 10},  # below limit_min
        {"critical_reserve": 50},  # not below limit_min
        {"recover_factor": 10.0},  # no hysteresis
        {"knee_factor": 5.0},  # above recover_factor
        {"severe_factor": 5.0},  # below latency_factor
    ],
)
def test_inconsistent_policies_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(POLICY, **change)  # type: ignore[arg-type]
    settings_change = {f"governor_{k}": v for k, v in change.items()}
    with pytest.raises(ValueError):
        Settings(**settings_change)  # type: ignore[arg-type]


def test_quantile_interpolates() -> None:
    assert quantile([1.0], 0.95) == 1.0
    assert quantile([0.0, 10.0], 0.5) == 5.0
    assert quantile([float(i) for i in range(101)], 0.95) == pytest.approx(95.0)


# --- leaving NORMAL --------------------------------------------------------------------------


@SLOW
@given(
    base=st.floats(0.002, 0.05),
    factor=st.floats(15.0, 100.0),
    calls_per_tick=st.integers(2, 20),
)
def test_a_latency_step_leaves_normal_within_enter_samples(
    base: float, factor: float, calls_per_tick: int
) -> None:
    """Synthetic samples: every tick, ``calls_per_tick`` calls complete. After the step each
    tick breaches, so the governor leaves NORMAL on exactly the enter_samples-th tick."""
    gov = Governor(POLICY, 0.0)
    t = 0.0

    def tick(latency: float) -> Decision:
        nonlocal t
        t += POLICY.tick_s
        for i in range(calls_per_tick):
            gov.observe_apply(latency, 10, False, t - POLICY.tick_s + (i + 1) * 0.001)
        return gov.tick(t, TickSignals())

    for _ in range(50):
        assert tick(base).state is N
    left_at = None
    for i in range(1, 20):
        if tick(base * factor).state is not N:
            left_at = i
            break
    assert left_at == POLICY.enter_samples
    [transition] = gov.drain_transitions()
    assert (transition.source, transition.target, transition.reason) == (N, D, "latency")


@SLOW
@given(base=st.floats(0.002, 0.05), factor=st.floats(15.0, 60.0), seed=st.integers(0, 10**6))
def test_a_step_on_a_one_thread_downstream_is_seen_within_two_slow_calls(
    base: float, factor: float, seed: int
) -> None:
    """Back-to-back calls on one thread (the worker's sink): the in-progress age is a lower
    bound, so detection needs about two slow calls' starts, not two completions."""
    rng = random.Random(seed)
    step = 30.0
    run = Run(
        POLICY,
        Downstream(lambda t, n: lognormal(base * (factor if t >= step else 1.0), 0.1, rng)),
    )
    run.seconds(step)
    assert not run.transitions
    run.seconds(5.0)
    assert run.transitions, "never left NORMAL"
    at, source, target, reason = run.transitions[0]
    slow_call = base * factor
    threshold = POLICY.latency_factor * run.gov.baseline  # type: ignore[operator]
    bound = slow_call + threshold + (POLICY.enter_samples + 2) * POLICY.tick_s + 2 * base
    assert (source, target, reason) == (N, D, "latency")
    assert at - step <= bound


# --- no flapping -----------------------------------------------------------------------------


@SLOW
@given(
    base=st.floats(0.002, 0.1),
    sigma=st.floats(0.0, 0.5),
    hiccup_every_s=st.floats(2.0, 20.0),
    seed=st.integers(0, 10**6),
)
def test_noisy_but_stable_latency_never_flaps(
    base: float, sigma: float, hiccup_every_s: float, seed: int
) -> None:
    """Lognormal noise plus an isolated slow call now and then (30x, shorter than stall_s: a
    checkpoint, a GC pause): no state change in five minutes, every lane runs throughout."""
    rng = random.Random(seed)
    hiccup = min(30 * base, 0.75 * POLICY.stall_s)
    every = max(hiccup_every_s, 5 * hiccup)  # isolated: far apart compared to their length
    next_hiccup = every

    def latency(t: float, n: int) -> float:
        nonlocal next_hiccup
        if t >= next_hiccup:
            next_hiccup = t + every
            return hiccup
        return lognormal(base, sigma, rng)

    run = Run(POLICY, Downstream(latency))
    run.seconds(300)
    assert run.transitions == []
    assert all(d.lanes == ALL_LANES and d.state is N for _, d in run.decisions)


@SLOW
@given(level=st.floats(5.0, 9.0), seed=st.integers(0, 10**6))
def test_between_the_thresholds_it_holds_its_state(level: float, seed: int) -> None:
    """Hysteresis: once DEGRADED, latency between recover_factor and latency_factor x the
    baseline (frozen while degraded) does not leave DEGRADED; from NORMAL the same level
    does not enter it (NORMAL's baseline follows a level held below the threshold: slow
    drifts become the baseline, steps are detected)."""
    rng = random.Random(seed)
    phase = {"mult": 1.0}
    run = Run(POLICY, Downstream(lambda t, n: lognormal(0.01 * phase["mult"], 0.05, rng)))
    run.seconds(20)
    phase["mult"] = 40.0
    run.seconds(5)
    assert [t[2] for t in run.transitions] == [D]
    phase["mult"] = level
    run.seconds(30)
    assert [t[2] for t in run.transitions] == [D]
    assert run.gov.baseline == pytest.approx(0.01, rel=0.2)
    phase["mult"] = 1.0
    run.seconds(10)
    assert [t[2] for t in run.transitions] == [D, R, N]
    phase["mult"] = level
    run.seconds(30)
    assert [t[2] for t in run.transitions] == [D, R, N]


# --- the knee --------------------------------------------------------------------------------


@SLOW
@given(
    a=st.floats(0.002, 0.04),
    knee=st.integers(300, 3000),
    seed=st.integers(0, 10**6),
)
def test_with_a_backlog_it_raises_the_limit_to_the_knee_and_holds(
    a: float, knee: int, seed: int
) -> None:
    """latency = a + b x records; with healthy latency and a backlog the limit (and batch
    size) rises until a bigger batch costs latency instead of buying throughput -- where the
    median big call reaches knee_factor x baseline -- then holds there."""
    policy = dataclasses.replace(
        POLICY, limit_initial=100, limit_max=20_000, batch_max=20_000, increase_step=25
    )
    b = a / knee
    rng = random.Random(seed)
    run = Run(policy, Downstream(lambda t, n: lognormal(a + b * n, 0.05, rng)))
    run.seconds(600)
    base = a + b * policy.limit_min  # what the probes measure
    expected = (policy.knee_factor * base - a) / b
    limits = [d.limit for t, d in run.decisions if t >= 400]
    assert run.transitions == []
    assert max(d.limit for _, d in run.decisions) > policy.limit_initial
    assert 0.6 * expected <= min(limits) and max(limits) <= 1.4 * expected, (expected, limits[-1])
    assert max(limits) - min(limits) <= 0.4 * expected  # it holds, no drift
    big = [d.batch_size for t, d in run.decisions if t >= 400 and d.batch_size > 50]
    assert big and min(big) >= 0.5 * expected


def test_without_a_backlog_or_without_cpu_room_the_limit_does_not_grow() -> None:
    for changes in ({"lag": 0}, {"cpu": 95.0}):
        run = Run(dataclasses.replace(POLICY, limit_initial=100), steady(0.005), **changes)  # type: ignore[arg-type]
        run.seconds(60)
        assert max(d.limit for _, d in run.decisions) == 100


# --- a spike, end to end ---------------------------------------------------------------------


def spike_run(spike_s: float = 20.0, mult: float = 40.0) -> tuple[Run, float, float]:
    rng = random.Random(3)
    phase = {"mult": 1.0}
    run = Run(POLICY, Downstream(lambda t, n: lognormal(0.01 * phase["mult"], 0.1, rng)))
    run.seconds(30)
    start = run.t
    phase["mult"] = mult
    run.seconds(spike_s)
    end = run.t
    phase["mult"] = 1.0
    run.seconds(30)
    return run, start, end


def test_a_spike_goes_normal_degraded_recovery_normal_once() -> None:
    run, start, end = spike_run()
    assert [(s, t) for _, s, t, _ in run.transitions] == [(N, D), (D, R), (R, N)]
    assert sum(1 for at, *_ in run.transitions if start <= at < end) == 1
    degraded = [d for t, d in run.decisions if start + 3 <= t < end]
    assert all(Lane.BULK not in d.lanes for d in degraded)
    assert all(d.lanes == {Lane.CRITICAL} for d in degraded[-50:])  # escalated: severe
    assert all(d.pacing_s > 0 for d in degraded)
    assert all(d.limit <= POLICY.limit_initial * POLICY.degrade_backoff for d in degraded)
    # Recovery resumes step by step: normal first, bulk later; then NORMAL with every lane.
    recovery = [d for _, d in run.decisions if d.state is R]
    assert recovery[0].lanes == {Lane.CRITICAL, Lane.NORMAL}
    assert recovery[-1].lanes == ALL_LANES
    assert run.decisions[-1][1].state is N and run.decisions[-1][1].lanes == ALL_LANES
    assert all(d.pacing_s == 0 for _, d in run.decisions if d.state is not D)


def test_a_breach_during_recovery_goes_back_to_degraded() -> None:
    rng = random.Random(5)
    phase = {"mult": 1.0}
    run = Run(POLICY, Downstream(lambda t, n: lognormal(0.01 * phase["mult"], 0.05, rng)))
    run.seconds(20)
    phase["mult"] = 40.0
    run.seconds(5)
    phase["mult"] = 1.0
    for _ in range(200):
        run.ticks(1)
        if run.gov.state is R:
            break
    assert run.gov.state is R
    phase["mult"] = 40.0
    run.seconds(3)
    assert [t for _, _, t, _ in run.transitions] == [D, R, D]


def test_idle_in_degraded_resumes_and_nothing_stays_stopped() -> None:
    rng = random.Random(9)
    phase = {"mult": 1.0, "busy": True}
    run = Run(
        POLICY,
        Downstream(
            lambda t, n: lognormal(0.01 * phase["mult"], 0.05, rng), busy=lambda t: phase["busy"]
        ),
    )
    run.seconds(20)
    phase["mult"] = 40.0
    run.seconds(5)
    assert run.gov.state is D
    phase["busy"] = False  # no traffic at all: nothing tells it the downstream is fine
    run.seconds(POLICY.idle_recover_s + 10)
    assert [(t, r) for _, _, t, r in run.transitions][-2:] == [(R, "idle"), (N, "settled")]
    assert run.gov.decision.lanes == ALL_LANES


def test_a_new_steady_level_becomes_the_baseline() -> None:
    policy = dataclasses.replace(POLICY, rebaseline_s=20.0)
    rng = random.Random(4)
    phase = {"mult": 1.0}
    run = Run(policy, Downstream(lambda t, n: lognormal(0.01 * phase["mult"], 0.05, rng)))
    run.seconds(20)
    phase["mult"] = 30.0  # for good
    run.seconds(40)
    reasons = [r for *_, r in run.transitions]
    assert reasons[:2] == ["latency", "rebaseline"]
    assert run.gov.state is N and run.gov.decision.lanes == ALL_LANES
    assert run.gov.baseline == pytest.approx(0.3, rel=0.3)


def test_slow_calls_while_the_worker_is_out_of_cpu_are_not_blamed_on_the_downstream() -> None:
    rng = random.Random(6)
    phase = {"mult": 1.0}
    run = Run(POLICY, Downstream(lambda t, n: lognormal(0.01 * phase["mult"], 0.05, rng)))
    run.seconds(20)
    run.cpu = 110.0
    phase["mult"] = 20.0
    run.seconds(10)
    assert run.transitions == []
    run.cpu = 30.0  # the CPU drains; the downstream is still slow: now it counts
    run.seconds(3)
    assert [t for _, _, t, _ in run.transitions] == [D]


@pytest.mark.parametrize(
    ("field_name", "value", "reason"),
    [("loop_lag", 2.0, "loop_lag"), ("rss", 10 * 2**30, "memory")],
)
def test_other_signals_degrade_too(field_name: str, value: float, reason: str) -> None:
    policy = dataclasses.replace(POLICY, rss_max_mb=1024.0)
    run = Run(policy, steady(0.01))
    run.seconds(20)
    setattr(run, field_name, value)
    run.seconds(2)
    assert run.transitions[0][1:] == (N, D, reason)


def test_a_failure_rate_degrades() -> None:
    phase = {"failing": False}
    run = Run(POLICY, Downstream(lambda t, n: 0.01, failing=lambda t: phase["failing"]))
    run.seconds(20)
    phase["failing"] = True
    run.seconds(3)
    assert run.transitions[0][1:] == (N, D, "errors")
    phase["failing"] = False
    run.seconds(30)
    assert run.gov.state is N


def test_no_judgement_before_a_baseline() -> None:
    gov = Governor(POLICY, 0.0)
    decision = gov.tick(0.1, TickSignals(pending_since=-100.0))
    assert decision.state is N and gov.baseline is None and not gov.drain_transitions()


# --- invariants over arbitrary signal sequences ----------------------------------------------

PHASES = st.lists(
    st.tuples(
        st.sampled_from(["ok", "slow", "very_slow", "idle", "failing", "loop_lag", "cpu"]),
        st.floats(0.5, 15.0),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(phases=PHASES, seed=st.integers(0, 10**6))
def test_invariants_and_nothing_is_left_stopped(phases: list[tuple[str, float]], seed: int) -> None:
    rng = random.Random(seed)
    state = {"phase": "ok"}
    mult = {"ok": 1.0, "slow": 6.0, "very_slow": 40.0, "idle": 1.0, "failing": 1.0}
    run = Run(
        POLICY,
        Downstream(
            lambda t, n: lognormal(0.01 * mult.get(state["phase"], 1.0), 0.2, rng),
            busy=lambda t: state["phase"] != "idle",
            failing=lambda t: state["phase"] == "failing",
        ),
    )
    run.seconds(10)
    for phase, seconds in phases:
        state["phase"] = phase
        run.loop_lag = 2.0 if phase == "loop_lag" else 0.001
        run.cpu = 150.0 if phase == "cpu" else 20.0
        run.seconds(seconds)
    state["phase"] = "ok"
    run.loop_lag, run.cpu = 0.001, 20.0
    run.seconds(15)  # a healthy stretch: everything must run again
    p = POLICY
    for _, d in run.decisions:
        assert Lane.CRITICAL in d.lanes
        assert p.limit_min <= d.limit <= p.limit_max
        assert 1 <= d.batch_size <= d.limit
        assert d.chunk(Lane.BULK) >= 1 and d.cap(Lane.BULK) == d.limit - p.critical_reserve
        assert 0.0 <= d.pacing_s <= p.pacing_max_s
        assert d.pacing_s == 0.0 or d.state is D
        assert (d.lanes == ALL_LANES) == (d.state is N or (d.state is R and d.lanes == ALL_LANES))
    assert run.gov.state is N and run.gov.decision.lanes == ALL_LANES
    # Changes of state are rate-limited by the hysteresis: never two within enter_samples ticks.
    times = [at for at, *_ in run.transitions]
    assert all(b - a >= p.enter_samples * p.tick_s - 1e-9 for a, b in itertools.pairwise(times))
    assert math.isfinite(run.gov.baseline or 0.0)


def test_after_a_spike_the_limit_grows_back_from_its_minimum() -> None:
    run, _, end = spike_run()
    limits_after = [d.limit for t, d in run.decisions if t >= end + 10]
    assert min(d.limit for _, d in run.decisions) == POLICY.limit_min
    assert limits_after and min(limits_after) >= POLICY.limit_initial
