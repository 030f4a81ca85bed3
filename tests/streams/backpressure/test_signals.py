"""Collecting the governor's signals in a worker, with a fake Faust app (no broker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from streams.backpressure.governor import Governor, GovernorPolicy
from streams.backpressure.lane_control import InFlightLimiter, LaneProcessor, PartitionPauser
from streams.backpressure.lanes import Lane
from streams.backpressure.signals import (
    ApplyTimer,
    LaneStats,
    ReceivedSensor,
    SignalCollector,
    TraceWriter,
)
from streams.failures.routing import SourceRecord
from streams.ops import metrics
from streams.topics import TopicNames

TOPICS = TopicNames("s.events", ("s.events.retry.1",), "s.events.dlt")


class TP(NamedTuple):
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    assigned: set[TP]
    high: dict[TP, int] = field(default_factory=dict)
    paused: set[TP] = field(default_factory=set)
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    _committed_offset: dict[TP, int] = field(default_factory=dict)
    _read_offset: dict[TP, int] = field(default_factory=dict)

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int:
        return self.high.get(tp, 0)

    def pause_partitions(self, tps: Any) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps: Any) -> None:
        self.paused -= set(tps)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


@dataclass
class FakeApp:
    consumer: FakeConsumer
    rebalancing: bool = False


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_apply_timer_times_calls_in_their_thread_and_reports_the_one_running() -> None:
    timer = ApplyTimer()
    release = threading.Event()
    started = threading.Event()

    def slow(events: list[Any]) -> list[Any]:
        started.set()
        release.wait(5)
        return []

    def failing(events: list[Any]) -> list[Any]:
        raise RuntimeError("downstream")

    thread = threading.Thread(target=timer.run, args=(slow, [1, 2, 3]))
    thread.start()
    assert started.wait(5)
    time.sleep(0.05)
    age = timer.pending_age(time.monotonic())
    assert age is not None and age >= 0.04
    release.set()
    thread.join(5)
    assert timer.pending_age(time.monotonic()) is None
    with pytest.raises(RuntimeError):
        timer.run(failing, [1])
    first, second = timer.drain()
    assert (first.records, first.failed, second.records, second.failed) == (3, False, 1, True)
    assert first.latency_s >= 0.04
    assert timer.drain() == []


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_tick_feeds_the_governor_enforces_and_traces(tmp_path: Path) -> None:
    lane_tps = {TP(t, p) for t in (TOPICS.main, TOPICS.critical, TOPICS.bulk) for p in (0, 1)}
    consumer = FakeConsumer(
        lane_tps | {TP(TOPICS.retries[0], 0)},
        high={TP(TOPICS.bulk, 0): 500, TP(TOPICS.main, 1): 40},
    )
    app = FakeApp(consumer)
    policy = GovernorPolicy(warmup_samples=1, stall_s=0.5)
    governor = Governor(policy, 0.0)
    clock = Clock()
    timer = ApplyTimer(clock=clock)
    limiter = InFlightLimiter(governor.decision)
    stats = LaneStats()
    lanes = LaneProcessor(
        lambda records: asyncio.sleep(0), TOPICS, limiter, on_settled=stats.settled
    )
    sensor = ReceivedSensor(TOPICS)
    pauser = PartitionPauser(TOPICS)
    trace = TraceWriter(tmp_path / "trace.jsonl")
    collector = SignalCollector(
        app=app,
        topics=TOPICS,
        governor=governor,
        timer=timer,
        lanes=lanes,
        pauser=pauser,
        sensor=sensor,
        stats=stats,
        tick_s=policy.tick_s,
        trace=trace,
    )
    labels = {"from": "normal", "to": "degraded", "reason": "latency"}
    before = sample("recon_governor_transitions_total", **labels)

    def call(latency: float) -> None:
        clock.t = now - latency

        def reconcile(events: list[Any]) -> list[Any]:
            clock.t = now
            return []

        timer.run(reconcile, [1])

    async def scenario() -> list[dict[str, Any]]:
        nonlocal now
        lines = []
        records = [SourceRecord(TOPICS.main, 1, i, 1, b"k", b"v") for i in range(10)]
        await lanes.process(Lane.NORMAL, records)
        for _ in range(10):  # healthy: 10 ms calls
            now += policy.tick_s
            for _ in range(5):
                call(0.01)
            lines.append(await collector.tick(now, 0.001))
        sensor.on_message_in(TP(TOPICS.bulk, 0), 41, None)
        # A stalled downstream: one call in progress that only gets older.
        release = threading.Event()
        clock.t = now
        stalled = threading.Thread(target=timer.run, args=(lambda e: release.wait(5), [1]))
        stalled.start()
        for _ in range(100):
            if timer.pending_since() is not None:
                break
            time.sleep(0.01)
        for _ in range(20):
            now += policy.tick_s
            lines.append(await collector.tick(now, 0.001))
        release.set()
        stalled.join(5)
        return lines

    now = 0.0
    lines = asyncio.run(scenario())
    assert lines[0]["processed"]["normal"] == 10
    assert lines[0]["lag"]["normal"] == 30  # 40 - next offset 10 (partition 1)
    assert lines[0]["lag"]["bulk"] == 0  # position unknown (nothing processed or committed)
    assert lines[-1]["state"] == "degraded"
    assert "bulk" not in lines[-1]["lanes"] and "critical" in lines[-1]["lanes"]
    assert consumer.paused >= {TP(TOPICS.bulk, 0), TP(TOPICS.bulk, 1)}
    assert TP(TOPICS.critical, 0) not in consumer.paused
    assert sample("recon_paused_partitions") == len(pauser.paused) >= 2
    assert sample("recon_governor_state") == 1
    assert sample("recon_governor_transitions_total", **labels) == before + 1

    # Healthy again: it recovers step by step; resuming rewinds each paused partition to the
    # first record the consumer has not delivered: bulk[0] delivered 41 and a stream took it
    # (42); bulk[1] read 19 -- its committed offset, so possibly Faust's seek target at
    # assignment, not a delivery: 19, re-delivered rather than skipped; bulk[2] nothing read
    # since the assignment: the committed offset it started from; bulk[3] read 30, a delivery
    # (neither taken yet nor a seek target): 31.
    consumer._read_offset[TP(TOPICS.bulk, 0)] = 41
    consumer._read_offset[TP(TOPICS.bulk, 1)] = 19
    consumer._committed_offset[TP(TOPICS.bulk, 1)] = 19
    consumer.assigned.add(TP(TOPICS.bulk, 3))
    consumer._read_offset[TP(TOPICS.bulk, 3)] = 30
    consumer._committed_offset[TP(TOPICS.bulk, 3)] = 12
    consumer.assigned.add(TP(TOPICS.bulk, 2))
    consumer._committed_offset[TP(TOPICS.bulk, 2)] = 7
    lines.append(asyncio.run(collector.tick(now, 0.001)))  # bulk[2] assigned: paused too
    assert {TP(TOPICS.bulk, 2), TP(TOPICS.bulk, 3)} <= consumer.paused

    async def recover() -> list[dict[str, Any]]:
        nonlocal now
        lines = []
        for _ in range(200):
            now += policy.tick_s
            for _ in range(5):
                call(0.01)
            lines.append(await collector.tick(now, 0.001))
            if lines[-1]["state"] == "normal":
                break
        return lines

    lines += asyncio.run(recover())
    trace.close()
    assert lines[-1]["state"] == "normal" and not consumer.paused
    assert sorted(consumer.seeks) == [
        (TP(TOPICS.bulk, 0), 42),
        (TP(TOPICS.bulk, 1), 19),
        (TP(TOPICS.bulk, 2), 7),
        (TP(TOPICS.bulk, 3), 31),
    ]
    written = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert len(written) == len(lines)
    states = [t["to"] for line in written for t in line["transitions"]]
    assert states == ["degraded", "recovery", "normal"]
    assert {"t", "state", "limit", "in_flight_peak", "lag", "processed", "paused"} <= set(
        written[0]
    )


def test_with_the_governor_off_it_still_traces_and_never_pauses(tmp_path: Path) -> None:
    consumer = FakeConsumer({TP(TOPICS.bulk, 0)})
    timer = ApplyTimer()
    limiter = InFlightLimiter(None)
    collector = SignalCollector(
        app=FakeApp(consumer),
        topics=TOPICS,
        governor=None,
        timer=timer,
        lanes=LaneProcessor(lambda r: asyncio.sleep(0), TOPICS, limiter),
        pauser=PartitionPauser(TOPICS),
        sensor=ReceivedSensor(TOPICS),
        stats=LaneStats(),
        tick_s=0.1,
    )
    timer.run(lambda events: [], [1, 2])
    line = asyncio.run(collector.tick(1.0, 0.002))
    assert line["state"] == "off" and line["apply"]["n"] == 1 and line["apply"]["records"] == 2
    assert consumer.paused == set()
    assert sample("recon_governor_state") == -1
