"""A graceful stop (SIGTERM) while batches are held -- the downstream is down and the circuit
is open -- must not commit them: after a restart with the downstream back, every record
applies. (Faust acks a batch taken with ``take_events`` when the agent body exits, even by
cancellation; the worker keeps its own reference on each record until it is settled.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from processors.codec import AvroCodec
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.kafka.offsets import committed_offsets
from streams.ops.observe import scrape_total
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_sigterm_while_the_circuit_holds_batches_commits_nothing_unsettled(
    settings: Settings, start_worker: object, tmp_path: Path
) -> None:
    control = tmp_path / "sim.json"
    write_conditions(control, SimConditions(outage=True))
    settings = settings.model_copy(
        update={"sink_url": f"sim://?db={tmp_path / 'sim.db'}&control={control}"}
    )
    ensure_topics(settings)
    records = list(generate(SyntheticSpec(count=2_000, poison_rate=0.0, seed=9), AvroCodec()))
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )

    worker: WorkerProcess = start_worker(settings)  # type: ignore[operator]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the circuit has opened on the outage
        opened = scrape_total(worker.metrics_url, "recon_circuit_opened_total")
        if opened >= 1:
            break
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.3)
    assert opened >= 1
    assert worker.stop() == 0  # graceful: Faust commits what was acked
    assert sum(committed_offsets(settings, settings.group, settings.topic).values()) == 0

    write_conditions(control, SimConditions())
    restarted: WorkerProcess = start_worker(settings)  # type: ignore[operator]
    wait_for_commits(settings, settings.topic, report.end_offsets, 120, [restarted])
    restarted.stop()
    sink = open_sink(settings.sink_url)
    try:
        assert expected.verify(sink.snapshot()) == []
    finally:
        sink.close()
