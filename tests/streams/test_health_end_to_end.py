"""Health endpoints and lag metrics of a real worker: /healthz answers, /readyz is 200 once
partitions are assigned, 503 with a reason while the downstream is out and partitions stop
progressing, and 200 again once they catch up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticSpec, generate
from streams.kafka.lag import consumed_topics, measure_lag
from streams.ops.observe import scrape
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


def wait_for_status(worker: WorkerProcess, path: str, status: int, timeout_s: float) -> Any:
    base = worker.metrics_url.removesuffix("/metrics")
    deadline = time.monotonic() + timeout_s
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = get(base + path)
        if last[0] == status:
            return last[1]
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"{path} never answered {status} in {timeout_s}s; last {last}")


def metric(worker: WorkerProcess, name: str, **labels: str) -> list[float]:
    return [
        value
        for (n, sample_labels), value in scrape(worker.metrics_url).items()
        if n == name and labels.items() <= dict(sample_labels).items()
    ]


def test_health_and_readiness_follow_the_worker(
    settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    control = tmp_path / "sim.json"
    write_conditions(control, SimConditions())
    settings = settings.model_copy(
        update={"sink_url": f"sim://?db={tmp_path / 'sim.db'}&control={control}"}
    )
    ensure_topics(settings)
    worker = start_worker(settings, RECON_READY_STALL_S="2")

    ready = wait_for_status(worker, "/readyz", 200, 90)
    assigned = len(consumed_topics(settings)) * settings.partitions  # lanes and retry tiers
    assert ready["ready"] is True and ready["assigned_partitions"] == assigned
    assert wait_for_status(worker, "/healthz", 200, 5)["alive"] is True
    assert metric(worker, "recon_assigned_partitions") == [float(assigned)]
    assert metric(worker, "recon_rebalances_total")[0] >= 1
    assert metric(worker, "recon_ready") == [1.0]
    for p in range(4):
        assert metric(worker, "recon_consumer_lag_messages", topic=settings.topic, partition=str(p))
        assert metric(worker, "recon_consumer_lag_seconds", topic=settings.topic, partition=str(p))

    # The downstream goes away while records arrive: the partitions stop progressing.
    write_conditions(control, SimConditions(outage=True))
    records = generate(SyntheticSpec(count=800, entities=200, seed=3), AvroCodec(EventLimits()))
    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )
    unready = wait_for_status(worker, "/readyz", 503, 60)
    assert unready["ready"] is False and "stuck" in unready["reason"]
    assert unready["stalled"] and unready["lag_messages"] > 0
    assert wait_for_status(worker, "/healthz", 200, 5)["alive"] is True  # alive, just not ready
    assert metric(worker, "recon_ready") == [0.0]
    assert sum(metric(worker, "recon_consumer_lag_messages", topic=settings.topic)) > 0

    # It comes back: the backlog drains and the worker is ready again.
    write_conditions(control, SimConditions())
    wait_for_commits(settings, settings.topic, report.end_offsets, 180, [worker])
    wait_for_status(worker, "/readyz", 200, 60)
    deadline = time.monotonic() + 30
    while sum(metric(worker, "recon_consumer_lag_messages", topic=settings.topic)) > 0:
        assert time.monotonic() < deadline, "lag gauges never came back to 0"
        time.sleep(0.5)
    assert metric(worker, "recon_commit_latency_seconds_count")[0] >= 1
    assert measure_lag(settings).total(settings.topic) == 0  # the outside view agrees

    assert worker.stop() == 0
