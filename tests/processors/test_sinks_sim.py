from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from processors.apply_rules import StoredRow
from processors.errors import DownstreamTimeout, DownstreamUnavailable
from processors.sinks.sim import (
    CONTROL_CHECK_INTERVAL_S,
    SimConditions,
    SimulatedSink,
    read_conditions,
    write_conditions,
)

ROWS = [StoredRow(f"acct-{i}", 1, False, {"i": i}, f"acct-{i}:v1", 0) for i in range(3)]


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def monotonic(self) -> float:
        return self.now


def make(
    tmp_path: Path, conditions: SimConditions | None = None, seed: int = 1
) -> tuple[SimulatedSink, FakeTime]:
    clock = FakeTime()
    sink = SimulatedSink(
        tmp_path / "sim.db",
        conditions,
        control=tmp_path / "ctl.json",
        rng=random.Random(seed),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    return sink, clock


def test_error_rate_one_fails_every_write_and_writes_nothing(tmp_path: Path) -> None:
    sink, _ = make(tmp_path, SimConditions(error_rate=1.0))
    for _ in range(5):
        with pytest.raises(DownstreamUnavailable):
            sink.write(ROWS)
    assert sink.snapshot() == {}
    assert sink.failures == 5


def test_error_rate_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def pattern(seed: int) -> list[bool]:
        sink = SimulatedSink(":memory:", SimConditions(error_rate=0.5), rng=random.Random(seed))
        outcomes = []
        for _ in range(40):
            try:
                sink.write(ROWS)
                outcomes.append(True)
            except DownstreamUnavailable:
                outcomes.append(False)
        return outcomes

    assert pattern(7) == pattern(7)
    assert 5 < sum(pattern(7)) < 35


def test_outage_fails_loads_and_writes(tmp_path: Path) -> None:
    sink, _ = make(tmp_path, SimConditions(outage=True))
    with pytest.raises(DownstreamUnavailable, match="outage"):
        sink.load(["acct-1"])
    with pytest.raises(DownstreamUnavailable, match="outage"):
        sink.write(ROWS)
    assert sink.snapshot() == {}  # verification still sees the real state


def test_latency_per_record_and_jitter(tmp_path: Path) -> None:
    conditions = SimConditions(latency_ms=5, per_record_us=1000, jitter_ms=2)
    sink, clock = make(tmp_path, conditions, seed=3)
    sink.write(ROWS)
    expected_jitter_ms = random.Random(3).expovariate(1 / 2)
    assert clock.slept == [pytest.approx((5 + 3 + expected_jitter_ms) / 1000)]
    sink.load(["acct-1"])
    assert clock.slept[-1] == pytest.approx(0.005)


def test_timeout_when_a_write_would_be_too_slow(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, SimConditions(latency_ms=50, timeout_ms=10))
    with pytest.raises(DownstreamTimeout):
        sink.write(ROWS)
    assert clock.slept == [pytest.approx(0.010)]
    assert sink.snapshot() == {}


def test_control_file_changes_take_effect_and_revert(tmp_path: Path) -> None:
    sink, clock = make(tmp_path, SimConditions(latency_ms=1))
    control = tmp_path / "ctl.json"
    assert sink.conditions == SimConditions(latency_ms=1)

    write_conditions(control, SimConditions(error_rate=1.0))
    # Not re-read before the check interval has passed.
    assert sink.conditions == SimConditions(latency_ms=1)
    clock.now += CONTROL_CHECK_INTERVAL_S
    assert sink.conditions == SimConditions(error_rate=1.0)
    with pytest.raises(DownstreamUnavailable):
        sink.write(ROWS)

    # A broken file keeps the conditions in force.
    control.write_text("{not json")
    clock.now += CONTROL_CHECK_INTERVAL_S
    assert sink.conditions == SimConditions(error_rate=1.0)

    # A partial file overrides only what it names, over the URL's conditions.
    control.write_text(json.dumps({"jitter_ms": 3}))
    clock.now += CONTROL_CHECK_INTERVAL_S
    assert sink.conditions == SimConditions(latency_ms=1, jitter_ms=3)

    control.unlink()
    clock.now += CONTROL_CHECK_INTERVAL_S
    assert sink.conditions == SimConditions(latency_ms=1)
    sink.write(ROWS)
    assert len(sink.snapshot()) == 3


def test_control_file_with_real_time(tmp_path: Path) -> None:
    control = tmp_path / "ctl.json"
    sink = SimulatedSink.from_url(f"sim://?db={tmp_path}/s.db&control={control}&seed=1")
    sink.write(ROWS)
    write_conditions(control, SimConditions(outage=True))
    time.sleep(CONTROL_CHECK_INTERVAL_S * 1.5)
    with pytest.raises(DownstreamUnavailable):
        sink.load(["acct-1"])
    sink.close()


def test_conditions_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    conditions = SimConditions(latency_ms=3, jitter_ms=1.5, per_record_us=2, error_rate=0.2)
    write_conditions(path, conditions)
    assert read_conditions(path) == conditions
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind
    path.write_text(json.dumps({"latency": 3}))
    with pytest.raises(ValueError, match="unknown sim conditions"):
        read_conditions(path)


@pytest.mark.parametrize(
    "bad",
    [
        {"error_rate": 1.5},
        {"latency_ms": -1},
        {"jitter_ms": "2"},
        {"outage": 1},
        {"timeout_ms": True},
    ],
)
def test_conditions_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimConditions(**bad)  # type: ignore[arg-type]
