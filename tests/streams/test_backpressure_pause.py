"""What pausing a lane really does, on a real broker with real workers.

The governor pauses a lane's partitions through Faust (``app.consumer.pause_partitions``);
the simulated downstream's latency spike makes it do so. Checked here:

* a paused partition stops fetching: while bulk is paused, bulk records produced do not reach
  the worker (what the bulk stream takes from Faust's consumer, counted by a sensor, does not
  move while its held batch is below the take size) and none is processed; the records Faust
  had already delivered before the pause wait in the bulk agent's buffers (measured and
  printed: ``buffered``);
* nothing is lost after resume: every record is processed, every committed offset reaches the
  end, and the sink holds each entity's last version (Faust drops records of a partition
  paused while a fetch is handed out, then takes the hole for a compaction gap -- the pauser
  rewinds before resuming; see streams/backpressure/lane_control.py);
* pauses follow rebalances: a worker joins and leaves while bulk is paused; after each
  rebalance the degraded worker pauses again exactly the stopped lanes' partitions it now
  holds, and once the spike is over nothing is left paused.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.backpressure import LaneLoad
from processors.codec import AvroCodec
from processors.event import EventLimits, Op, Priority, ReconEvent
from processors.sinks.sim import SimConditions, write_conditions
from streams.backpressure.lanes import Lane
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]

BASE_MS = 5.0
SPIKE_MS = 200.0


def trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue  # a line being written
    return lines


def wait_until(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    workers: list[WorkerProcess],
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for worker in workers:
            if worker.proc.poll() is not None:
                raise AssertionError(f"worker exited while waiting for {what}:\n{worker.log()}")
        time.sleep(0.2)
    logs = "\n".join(w.log()[-3000:] for w in workers)
    raise AssertionError(f"{what}: not within {timeout_s}s\n{logs}")


def events(lane: Lane, start: int, count: int, entities: int) -> list[tuple[bytes, bytes]]:
    codec = AvroCodec(EventLimits())
    out = []
    for i in range(start, start + count):
        event = ReconEvent(
            event_id=f"p-{lane.value}-{i}",
            entity_id=f"p-{lane.value}-{i % entities}",
            version=i // entities + 1,
            op=Op.UPSERT,
            fields={"i": i},
            priority=Priority(lane.value),
            occurred_at_ms=int(time.time() * 1000),
            source="test",
        )
        out.append((event.entity_id.encode(), codec.encode(event)))
    return out


def expected_versions(lane: Lane, count: int, entities: int) -> dict[str, int]:
    return {f"p-{lane.value}-{i % entities}": i // entities + 1 for i in range(count)}


class Setup:
    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.control = tmp_path / "sim.json"
        self.db = tmp_path / "sink.db"
        self.settings = settings.model_copy(
            update={"sink_url": f"sim://?db={self.db}&control={self.control}&latency_ms={BASE_MS}"}
        )
        self.topics = TopicNames.from_settings(self.settings)
        self.tmp_path = tmp_path
        ensure_topics(self.settings)
        write_conditions(self.control, SimConditions(latency_ms=BASE_MS))

    def env(self, name: str) -> dict[str, str]:
        return {
            "RECON_GOVERNOR_TRACE_PATH": str(self.tmp_path / f"trace-{name}.jsonl"),
            "RECON_FETCH_MAX_WAIT_MS": "100",
            "RECON_GOVERNOR_LIMIT_MAX": "1000",
        }

    def trace(self, name: str) -> list[dict[str, Any]]:
        return trace(self.tmp_path / f"trace-{name}.jsonl")

    def spike(self, on: bool) -> None:
        write_conditions(self.control, SimConditions(latency_ms=SPIKE_MS if on else BASE_MS))

    def produce(self, lane: Lane, start: int, count: int, entities: int) -> dict[int, int]:
        report = publish(
            make_producer(self.settings),
            self.topics.lane_topic(lane),
            events(lane, start, count, entities),
        )
        assert report.published == count and not report.failed
        return report.end_offsets

    def rows(self) -> dict[str, int]:
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT entity_id, version FROM entity_state").fetchall())

    def loads(self, bulk_rate: float = 0.0) -> list[LaneLoad]:
        """Steady critical and normal traffic (the governor sees the downstream through the
        calls it makes, so it needs some), and bulk traffic if asked."""
        loads = [
            LaneLoad(self.settings, Lane.CRITICAL, 10.0, 200, 240.0),
            LaneLoad(self.settings, Lane.NORMAL, 50.0, 500, 240.0),
        ]
        if bulk_rate:
            loads.append(LaneLoad(self.settings, Lane.BULK, bulk_rate, 500, 240.0))
        for load in loads:
            load.start()
        return loads


def stop(loads: list[LaneLoad]) -> None:
    for load in loads:
        load.stop_event.set()
    for load in loads:
        load.join(timeout=40)
        assert not load.failed


def degraded_with_bulk_paused(setup: Setup, name: str) -> Callable[[], Any]:
    def check() -> Any:
        lines = setup.trace(name)
        if not lines:
            return None
        last = lines[-1]
        bulk_assigned = last.get("assigned", {}).get("bulk", 0)
        if last["state"] == "degraded" and "bulk" not in last["lanes"] and bulk_assigned:
            return last if last["paused"] >= bulk_assigned else None
        return None

    return check


def test_a_paused_partition_stops_fetching_and_loses_nothing(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    setup = Setup(settings, tmp_path)
    worker = start_worker(setup.settings, **setup.env("a"))
    workers = [worker]
    wait_until("assignment", lambda: any(x.get("assigned") for x in setup.trace("a")), 90, workers)
    loads = setup.loads(bulk_rate=300.0)  # bulk records in flight when the pause lands
    try:
        ends = setup.produce(Lane.BULK, 0, 300, 100)
        wait_until(
            "healthy bulk",
            lambda: setup.trace("a")[-1]["processed"]["bulk"] >= 300,
            60,
            workers,
        )
        setup.spike(True)
        paused = wait_until("bulk paused", degraded_with_bulk_paused(setup, "a"), 30, workers)
        time.sleep(1.5)  # any fetch handed out with the old active set is over by now
        before = setup.trace("a")[-1]
        ends = setup.produce(Lane.BULK, 300, 2000, 100)
        time.sleep(4.0)
        during = [line for line in setup.trace("a") if line["t"] > before["t"]]
        assert all(line["state"] == "degraded" for line in during)
        # No new bulk record reached the worker while paused, and none was processed but
        # those already admitted (in flight) before it: they settle, then bulk stands still.
        assert {line["received"]["bulk"] for line in during} == {before["received"]["bulk"]}
        settled_after = max(line["processed"]["bulk"] for line in during)
        assert settled_after - before["processed"]["bulk"] <= before["in_flight"]
        assert settled_after <= before["received"]["bulk"]
        assert during[-1]["processed"]["bulk"] == during[-6]["processed"]["bulk"]
        buffered = before["received"]["bulk"] - before["processed"]["bulk"]
        # "received" counts what the bulk stream took from Faust's consumer; it could only
        # stall with records waiting if the stopped lane's held batch were full (take size).
        assert buffered < 1000
        produced_during = sum(1 for t in loads[2].sent_times if t > before["t"])
        print(
            f"\nbulk paused at t={paused['t']:.1f}: received {before['received']['bulk']}, "
            f"processed {before['processed']['bulk']}, buffered (delivered before the pause, "
            f"held by the stopped lane) {buffered}; produced while paused "
            f"{2000 + produced_during}: 0 fetched"
        )
    finally:
        setup.spike(False)
        stop(loads)
    wait_until(
        "recovered",
        lambda: setup.trace("a")[-1]["state"] == "normal" and setup.trace("a")[-1]["paused"] == 0,
        60,
        workers,
    )
    steady_bulk = loads[2].delivered
    wait_until(
        "bulk drained",
        lambda: setup.trace("a")[-1]["processed"]["bulk"] >= 2300 + steady_bulk,
        120,
        workers,
    )
    wait_for_commits(setup.settings, setup.topics.bulk, ends, 120, workers)
    rows = setup.rows()
    for entity, version in expected_versions(Lane.BULK, 2300, 100).items():
        assert rows.get(entity) == version, entity
    for i in range(min(steady_bulk, 500)):  # LaneLoad: entity i % 500, version i // 500 + 1
        last_i = i + (steady_bulk - 1 - i) // 500 * 500
        assert rows.get(f"bulk-{i}") == last_i // 500 + 1, i
    assert setup.trace("a")[-1]["paused"] == 0


def test_pauses_follow_rebalances_and_nothing_stays_paused(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    setup = Setup(settings, tmp_path)
    a = start_worker(setup.settings, **setup.env("a"))
    workers = [a]
    wait_until("assignment", lambda: any(x.get("assigned") for x in setup.trace("a")), 90, workers)
    loads = setup.loads()
    try:
        setup.produce(Lane.BULK, 0, 200, 100)
        wait_until(
            "baseline", lambda: setup.trace("a")[-1]["processed"]["bulk"] >= 200, 60, workers
        )
        setup.spike(True)
        wait_until("bulk paused", degraded_with_bulk_paused(setup, "a"), 30, workers)
        bulk_ends = setup.produce(Lane.BULK, 200, 1000, 100)

        def holds(predicate: Callable[[int], bool]) -> Callable[[], Any]:
            def check() -> Any:
                lines = setup.trace("a")
                last = lines[-1]
                bulk = last.get("assigned", {}).get("bulk", 0)
                stopped = sum(
                    n for lane, n in last.get("assigned", {}).items() if lane not in last["lanes"]
                )
                ok = predicate(bulk) and not last["rebalancing"] and last["paused"] == stopped
                return last if ok and last["state"] == "degraded" else None

            return check

        # B joins: A keeps part of the partitions, and pauses again the ones still warranted.
        b = start_worker(setup.settings, **setup.env("b"))
        workers.append(b)
        shared = wait_until("rebalanced, re-paused", holds(lambda n: 0 < n < 4), 60, workers)
        assert shared["paused"] >= shared["assigned"]["bulk"]
        # B leaves: A gets everything back, paused again where the lane is stopped.
        assert b.stop() == 0
        workers.remove(b)
        alone = wait_until("all back, re-paused", holds(lambda n: n == 4), 60, workers)
        assert alone["paused"] >= 4
    finally:
        setup.spike(False)
        stop(loads)
    wait_until(
        "recovered",
        lambda: setup.trace("a")[-1]["state"] == "normal" and setup.trace("a")[-1]["paused"] == 0,
        60,
        workers,
    )
    wait_for_commits(setup.settings, setup.topics.bulk, bulk_ends, 120, workers)
    rows = setup.rows()
    for entity, version in expected_versions(Lane.BULK, 1200, 100).items():
        assert rows.get(entity) == version, entity
    assert a.stop() == 0
