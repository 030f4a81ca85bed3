"""DLT tooling against a real worker: dead letters listed with reasons, redriven after the
downstream recovers, and redriving twice applies nothing twice."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from processors.codec import AvroCodec
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams import cli
from streams.failures.dlt import DltFilter, redrive, scan
from streams.failures.routing import ATTEMPT, DUE_MS, ORIGINAL_OFFSET, REDRIVE_COUNT, headers_dict
from streams.kafka.offsets import read_topic
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COUNT = 400


def _wait_outcomes(
    worker: WorkerProcess, predicate: object, timeout_s: float = 90
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    totals: dict[str, int] = {}
    while time.monotonic() < deadline:
        totals = dict(outcome_totals([worker.metrics_url]))
        if predicate(totals):  # type: ignore[operator]
            return totals
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"outcomes never satisfied the condition: {totals}")


def test_dead_letters_redrive_after_recovery(
    settings: Settings, start_worker: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    control = tmp_path / "sim.json"
    write_conditions(control, SimConditions(error_rate=1.0))  # the downstream refuses writes
    settings = settings.model_copy(
        update={
            "sink_url": f"sim://?db={tmp_path / 'sim.db'}&control={control}",
            "retry_delays": (0.2, 0.2),
        }
    )
    ensure_topics(settings)
    records = list(
        generate(SyntheticSpec(count=COUNT, entities=100, poison_rate=0.0, seed=4), AvroCodec())
    )
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    worker: WorkerProcess = start_worker(  # type: ignore[operator]
        settings,
        RECON_INLINE_ATTEMPTS="1",
        RECON_CIRCUIT_ENABLED="false",
        RECON_RETRY_BUDGET_ENABLED="false",
    )
    publish(make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records))

    # Every record exhausts both tiers and lands on the DLT.
    _wait_outcomes(worker, lambda t: t.get("dead_lettered", 0) >= COUNT)
    letters = [letter for letter, _ in scan(settings, DltFilter(), idle_timeout_s=1.0)]
    assert len(letters) == COUNT
    assert {letter.reason for letter in letters} == {"retries_exhausted"}
    assert {letter.error_class for letter in letters} == {"DownstreamUnavailable"}
    assert {letter.attempt for letter in letters} == {3}
    assert all(letter.original_topic == settings.topic for letter in letters)

    # `recon dlt --json` lists them with reasons; filters narrow the list.
    env_args = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic]
    assert cli.main(["dlt", "--json", *env_args]) == 0
    captured = capsys.readouterr()
    listed = [json.loads(line) for line in captured.out.splitlines()]
    assert listed, captured.err
    assert len(listed) == COUNT and listed[0]["reason"] == "retries_exhausted"
    assert cli.main(["dlt", "--json", "--reason", "conflict", *env_args]) == 0
    assert capsys.readouterr().out == ""

    # Dry run moves nothing.
    out = io.StringIO()
    report = redrive(
        settings, DltFilter(reasons=frozenset({"retries_exhausted"})), dry_run=True, out=out
    )
    assert report.matched == COUNT and report.redriven == 0
    assert out.getvalue().count("would redrive") == COUNT

    # The downstream recovers; redrive: everything applies, provenance kept, attempts reset.
    write_conditions(control, SimConditions())
    assert redrive(settings, DltFilter(), dry_run=False).redriven == COUNT
    totals = _wait_outcomes(
        worker, lambda t: sum(t.get(o, 0) for o in TERMINAL_OUTCOMES) >= 2 * COUNT
    )
    assert totals["dead_lettered"] == COUNT  # nothing new dead-lettered
    sink = open_sink(settings.sink_url)
    try:
        rows_after_first = sink.snapshot()
    finally:
        sink.close()
    assert expected.verify(rows_after_first) == []
    redriven = [
        headers_dict(m.headers() or [])
        for m in read_topic(settings, settings.topic)
        if headers_dict(m.headers() or []).get(REDRIVE_COUNT)
    ]
    assert len(redriven) == COUNT
    assert all(h[REDRIVE_COUNT] == "1" and ATTEMPT not in h and DUE_MS not in h for h in redriven)
    assert all(ORIGINAL_OFFSET in h for h in redriven)

    # Redriving again applies nothing twice: every record is now a duplicate or stale.
    before = outcome_totals([worker.metrics_url])
    assert redrive(settings, DltFilter(), dry_run=False).redriven == COUNT
    after = _wait_outcomes(
        worker, lambda t: sum(t.get(o, 0) for o in TERMINAL_OUTCOMES) >= 3 * COUNT
    )
    assert after["applied"] == before["applied"]
    sink = open_sink(settings.sink_url)
    try:
        rows_after_second = sink.snapshot()
    finally:
        sink.close()
    assert {k: (r.version, r.last_event_id) for k, r in rows_after_second.items()} == {
        k: (r.version, r.last_event_id) for k, r in rows_after_first.items()
    }
    assert all(
        r.updated_at_ms == rows_after_first[k].updated_at_ms for k, r in rows_after_second.items()
    )
