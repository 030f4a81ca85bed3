"""The backpressure scenario, asserted: a worker on a simulated downstream whose latency steps
from 5 ms to 200 ms for 20 s and back, under steady load on the three lanes (critical 20/s,
normal 200/s, bulk 400/s). Same runner as ``make bench-backpressure`` (bench/backpressure.py);
every figure comes from the worker's governor trace and the times the control file was
written.

Bounds, and why they are what they are (measured values in docs/backpressure.md):

* leaves NORMAL within 1 s of the step (the issue's bound; measured ~0.5-0.7 s: the first
  slow call must start, and a breach must last 4 ticks and span 2 calls);
* in flight never above the configured bound (RECON_GOVERNOR_LIMIT_MAX=1000 here);
* critical keeps flowing during the spike -- >= 80 % of the critical events produced in the
  spike settle within it -- with an end-to-end p99 under 3 s: every sink call takes 400 ms
  in the spike (load + write, 200 ms each), a critical batch waits for the call in progress
  and for its own, and until the normal lane is stopped (~1 s after the step) for a normal
  call too; measured p99 ~1.6-1.9 s, p50 ~0.7 s;
* bulk is paused for (nearly) the whole spike after detection;
* throughput back to >= 90 % of the pre-spike throughput within 5 s of the step back
  (measured ~2.8 s);
* at most 2 state changes during the spike (measured: 1), one NORMAL -> DEGRADED ->
  RECOVERY -> NORMAL cycle in all, nothing paused at the end, and nothing lost.

Generous for a 2-core machine shared with other test runs; no bound here is a speed target.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench.backpressure import ScenarioSpec, run_scenario

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_downstream_latency_spike(bootstrap_servers: str, tmp_path: Path) -> None:
    spec = ScenarioSpec(governor=True)
    run = run_scenario(bootstrap_servers, tmp_path, spec)
    fig = run.figures
    context = f"figures: {fig}\nworker log: {run.worker_log}"

    assert fig.detect_s is not None and fig.detect_s <= 1.0, context
    assert fig.in_flight_peak <= int(spec.worker_env["GOVERNOR_LIMIT_MAX"]), context

    assert fig.critical_e2e_spike_n >= 0.8 * fig.critical_produced_spike > 0, context
    assert fig.critical_e2e_spike_p99_s is not None and fig.critical_e2e_spike_p99_s < 3.0, context
    assert fig.bulk_paused_share >= 0.9, context

    assert fig.recovery_s is not None and fig.recovery_s <= 5.0, context
    assert fig.changes_during_spike <= 2, context
    after_step = [(t["from"], t["to"]) for t in fig.transitions if t["t"] >= run.step_at]
    assert after_step == [("normal", "degraded"), ("degraded", "recovery"), ("recovery", "normal")]
    assert fig.final_state == "normal" and fig.paused_at_end == 0, context

    # Nothing lost: every produced event settled (re-deliveries may add a few), and each
    # entity holds the highest version produced for it.
    assert fig.produce_failed == 0, context
    assert sum(fig.processed.values()) >= sum(fig.produced.values()), context
    [db] = tmp_path.glob("sink-*.db")
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT entity_id, version FROM entity_state").fetchall())
    for lane, count in fig.produced.items():
        for entity in range(min(count, spec.entities)):
            last = entity + (count - 1 - entity) // spec.entities * spec.entities
            assert rows.get(f"{lane}-{entity}") == last // spec.entities + 1, (lane, entity)
