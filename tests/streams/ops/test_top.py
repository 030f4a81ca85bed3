"""``recon top``: rates from successive scrapes, the rendered view, and a run against a real
worker (2 refreshes) whose output must show the worker's own numbers."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from rich.console import Console

from streams.ops.observe import scrape
from streams.ops.top import (
    PartitionLag,
    WorkerSnapshot,
    check_url,
    outcome_rates,
    parse_snapshot,
    render,
    run_top,
)
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.dashboards.test_dashboards import publish_synthetic, wait_until_processed
from tests.streams.conftest import WorkerProcess

EXPOSITION = """\
# HELP recon_records_outcome_total Records by final outcome
# TYPE recon_records_outcome_total counter
recon_records_outcome_total{outcome="applied",reason="",topic="t"} 90.0
recon_records_outcome_total{outcome="applied",reason="",topic="t.bulk"} 10.0
recon_records_outcome_total{outcome="dead_lettered",reason="invalid",topic="t"} 3.0
# TYPE recon_consumer_lag_messages gauge
recon_consumer_lag_messages{partition="0",topic="t"} 42.0
recon_consumer_lag_messages{partition="1",topic="t"} 0.0
# TYPE recon_consumer_lag_seconds gauge
recon_consumer_lag_seconds{partition="0",topic="t"} 7.5
recon_consumer_lag_seconds{partition="1",topic="t"} 0.0
# TYPE recon_in_flight_records gauge
recon_in_flight_records 17.0
# TYPE recon_circuit_state gauge
recon_circuit_state 2.0
# TYPE recon_governor_state gauge
recon_governor_state 1.0
# TYPE recon_governor_limit gauge
recon_governor_limit 250.0
# TYPE recon_paused_partitions gauge
recon_paused_partitions 4.0
# TYPE recon_ready gauge
recon_ready 1.0
"""


def text_of(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable)
    return out.getvalue()


def test_parse_and_rates() -> None:
    before = parse_snapshot("http://w/metrics", EXPOSITION, at=10.0)
    assert before.outcomes == {"applied": 100.0, "dead_lettered": 3.0}
    assert before.in_flight == 17 and before.circuit == 2 and before.governor == 1
    assert before.governor_limit == 250 and before.paused == 4 and before.ready == 1
    assert sorted(before.lag, key=lambda p: p.partition)[0] == PartitionLag(
        "t", 0, 42.0, 7.5, "http://w/metrics"
    )
    after = parse_snapshot("http://w/metrics", EXPOSITION.replace("} 90.0", "} 290.0"), at=12.0)
    assert outcome_rates(before, after) == {"applied": 100.0, "dead_lettered": 0.0}
    assert outcome_rates(None, after) is None
    # a counter that went down: the worker restarted, its rate counts from zero
    restarted = parse_snapshot("http://w/metrics", EXPOSITION.replace("} 90.0", "} 4.0"), 14.0)
    assert outcome_rates(after, restarted) == {"applied": 7.0, "dead_lettered": 0.0}
    down = WorkerSnapshot(url="http://w/metrics", at=14.0, error="refused")
    assert outcome_rates(restarted, down) is None


def test_render_shows_states_and_down_workers() -> None:
    snap = parse_snapshot("http://a/metrics", EXPOSITION, at=1.0)
    down = WorkerSnapshot(url="http://b/metrics", at=1.0, error="Connection refused")
    view = text_of(render([snap, down], [{"applied": 12.5}, None], iteration=3))
    assert "refresh 3" in view and "workers 1/2 up" in view and "lag 42 messages" in view
    assert re.search(
        r"http://a/metrics .*up .*yes .*17 .*open .*degraded .*250 .*4 .*12\.5/s", view
    )
    assert "DOWN" in view and "Connection refused" in view
    assert re.search(r"applied\s*│\s*100\s*│\s*12\.5/s", view)
    assert re.search(r"│ t\s*│\s*0\s*│\s*42\s*│\s*7\.5\s*│", view)


def test_run_top_stops_after_iterations() -> None:
    calls: list[str] = []

    def fake_scrape(url: str) -> WorkerSnapshot:
        calls.append(url)
        return parse_snapshot(url, EXPOSITION, at=float(len(calls)))

    out = io.StringIO()
    code = run_top(
        ["http://x/metrics"],
        iterations=3,
        interval_s=0,
        console=Console(file=out, width=200),
        scrape=fake_scrape,
        sleep=lambda s: None,
    )
    assert code == 0 and len(calls) == 3
    assert out.getvalue().count("recon top") == 3
    with pytest.raises(ValueError):
        check_url("file:///etc/passwd")


@pytest.mark.broker
@pytest.mark.slow
def test_top_against_a_real_worker(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    ensure_topics(settings)
    worker = start_worker(settings)
    published = publish_synthetic(settings, 200, seed=5)
    wait_until_processed(worker, published, timeout_s=120)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "top",
            "--metrics-url",
            worker.metrics_url,
            "--iterations",
            "2",
            "--interval",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "220"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "refresh 1" in out and "refresh 2" in out and "workers 1/1 up" in out
    samples = scrape(worker.metrics_url)
    applied = sum(
        v
        for (n, labels), v in samples.items()
        if n == "recon_records_outcome_total" and dict(labels)["outcome"] == "applied"
    )
    dead = sum(
        v
        for (n, labels), v in samples.items()
        if n == "recon_records_outcome_total" and dict(labels)["outcome"] == "dead_lettered"
    )
    assert applied > 0 and dead > 0
    # the second refresh has rates (nothing new arrived: 0.0/s) and the same totals
    second = out.split("refresh 2", 1)[1]
    assert re.search(rf"applied\s*│\s*{int(applied):,}\s*│\s*0\.0/s", second), second
    assert re.search(rf"dead_lettered\s*│\s*{int(dead):,}\s*│\s*0\.0/s", second)
    limit = int(samples[("recon_governor_limit", ())])
    assigned = int(samples[("recon_assigned_partitions", ())])
    assert re.search(
        rf"│\s*up\s*│\s*yes\s*│\s*{assigned}\s*│\s*0\s*│\s*closed\s*│\s*normal\s*│"
        rf"\s*{limit}\s*│\s*0\s*│\s*0\.0/s",
        second,
    ), second
    for partition in range(settings.partitions):
        assert re.search(
            rf"│ {re.escape(settings.topic)}\s*│\s*{partition}\s*│\s*0\s*│\s*0\.0", second
        )
    assert worker.stop() == 0
