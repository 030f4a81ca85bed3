"""Scale-out on one consumer group, with real ``recon worker`` processes.

* Three workers share the load; one is killed with SIGKILL mid-stream and a fourth joins
  mid-stream. The sink ends exactly as the published events say, and the group's committed
  offsets reach the produced end offsets.
* SIGTERM in the middle of a backlog: the worker drains and exits with code 0 within 20 s,
  and a successor finishes the job exactly.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticRecord, SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.kafka.offsets import committed_offsets
from streams.publish import PublishReport, make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 6_000


def _records(seed: int) -> list[SyntheticRecord]:
    spec = SyntheticSpec(
        count=EVENTS,
        entities=1_000,
        duplicate_rate=0.05,
        reorder_rate=0.05,
        poison_rate=0.002,
        seed=seed,
    )
    return list(generate(spec, AvroCodec(EventLimits())))


def _verify_sink(settings: Settings, records: list[SyntheticRecord]) -> None:
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    sink = open_sink(settings.sink_url)
    try:
        rows = sink.snapshot()
    finally:
        sink.close()
    assert expected.verify(rows) == []


def _ready(worker: WorkerProcess) -> bool:
    url = worker.metrics_url.removesuffix("/metrics") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def _alive(worker: WorkerProcess) -> bool:
    url = worker.metrics_url.removesuffix("/metrics") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def _wait(condition: Callable[[], bool], what: str, timeout_s: float, workers: list[Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            assert worker.proc.poll() is None, f"worker exited early:\n{worker.log()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s}s"
        time.sleep(0.25)


def _stop_within(worker: WorkerProcess, limit_s: float = 20.0) -> float:
    """SIGTERM, and the seconds until the worker exited (it must exit 0 within ``limit_s``)."""
    started = time.monotonic()
    code = worker.stop(timeout_s=limit_s)
    took = time.monotonic() - started
    assert code == 0, f"exit code {code} after {took:.1f}s:\n{worker.log()[-3000:]}"
    return took


def test_three_workers_one_killed_one_joining(settings: Settings, start_worker: Any) -> None:
    ensure_topics(settings)
    records = _records(seed=17)
    workers: list[WorkerProcess] = [start_worker(settings) for _ in range(3)]
    _wait(lambda: all(_ready(w) for w in workers), "all three workers ready", 120, workers)

    # Publish at a steady pace in the background so the kill and the join land mid-stream.
    report = PublishReport()
    published = threading.Event()

    def produce() -> None:
        nonlocal report
        report = publish(
            make_producer(settings),
            settings.topic,
            ((r.key.encode(), r.value) for r in records),
            rate_per_s=600,
        )
        published.set()

    producer = threading.Thread(target=produce, name="scale-out-producer", daemon=True)
    producer.start()

    def committed() -> int:
        return sum(committed_offsets(settings, settings.group, settings.topic).values())

    _wait(lambda: committed() >= EVENTS // 4, "a quarter committed", 120, workers)
    assert not published.is_set(), "the load ended before the kill; lower the rate"
    victim = workers.pop(0)
    victim.kill()

    joiner = start_worker(settings)
    workers.append(joiner)
    _wait(published.is_set, "publishing", 120, workers)
    producer.join(timeout=10)
    assert report.published == EVENTS and not report.failed

    final = wait_for_commits(settings, settings.topic, report.end_offsets, 240, workers)
    assert final == report.end_offsets  # committed exactly up to the produced end offsets
    _verify_sink(settings, records)
    # The joiner is up; whether it got partitions is the assignor's call (Faust assigns
    # partition numbers across all topics together, 4 here, and keeps owners sticky).
    _wait(lambda: _alive(joiner), "the joined worker alive", 60, workers)
    for worker in workers:
        _stop_within(worker)


def test_sigterm_drains_and_exits_in_time(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    # A slow downstream keeps a backlog in flight when SIGTERM arrives.
    control = tmp_path / "sim.json"
    write_conditions(control, SimConditions(latency_ms=40.0))
    settings = settings.model_copy(
        update={"sink_url": f"sim://?db={tmp_path / 'sim.db'}&control={control}"}
    )
    ensure_topics(settings)
    records = _records(seed=23)[:3_000]
    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )
    assert report.published == len(records)

    worker = start_worker(settings, RECON_BATCH_MAX="50")
    _wait(lambda: committed_sum(settings) > 0, "first commit", 120, [worker])
    assert committed_sum(settings) < len(records), "drained before SIGTERM; slow the sink"
    took = _stop_within(worker)
    assert took < 20.0

    write_conditions(control, SimConditions())
    successor = start_worker(settings)
    wait_for_commits(settings, settings.topic, report.end_offsets, 180, [successor])
    _stop_within(successor)

    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    sink = open_sink(settings.sink_url)
    try:
        assert expected.verify(sink.snapshot()) == []
    finally:
        sink.close()


def committed_sum(settings: Settings) -> int:
    return sum(committed_offsets(settings, settings.group, settings.topic).values())
