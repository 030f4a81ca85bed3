"""The core promise, end to end on a real broker: a worker killed with SIGKILL mid-stream and
restarted loses nothing and regresses nothing; every poison pill is dead-lettered."""

from __future__ import annotations

import time

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.reference_model import ReferenceModel
from processors.sinks import open_sink
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.failures.routing import (
    DLT_REASON,
    ERROR_KIND,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    headers_dict,
)
from streams.kafka.offsets import committed_offsets, read_topic
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import postgres_url_or_skip
from tests.streams.conftest import wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 20_000


def _run_with_crash(settings: Settings, start_worker: object) -> None:
    ensure_topics(settings)
    codec = AvroCodec(EventLimits())
    spec = SyntheticSpec(
        count=EVENTS,
        entities=2_000,
        duplicate_rate=0.05,
        reorder_rate=0.05,
        poison_rate=0.002,
        seed=11,
    )
    records = list(generate(spec, codec))
    model = ReferenceModel(codec)
    for record in records:
        model.observe(record.key, record.value)
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    assert model.dead_lettered > 0 and model.counts["stale"] > 0  # the load has all kinds

    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )
    assert report.published == EVENTS and not report.failed
    assert len(report.end_offsets) == settings.partitions

    worker = start_worker(settings)  # type: ignore[operator]
    # Crash it once it has committed part (not all) of the stream.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = sum(committed_offsets(settings, settings.group, settings.topic).values())
        if done >= EVENTS // 4:
            break
        assert worker.proc.poll() is None, worker.log()[-3000:]
        time.sleep(0.2)
    assert done < EVENTS, "worker finished before it could be killed; raise EVENTS"
    worker.kill()

    restarted = start_worker(settings)  # type: ignore[operator]
    wait_for_commits(settings, settings.topic, report.end_offsets, 240, [restarted])
    restarted.stop()

    # Sink: row by row against the reference model (publication order per key) ...
    sink = open_sink(settings.sink_url)
    try:
        rows = sink.snapshot()
    finally:
        sink.close()
    assert expected.verify(rows) == []
    assert set(rows) == set(model.rows)
    for entity_id, row in rows.items():
        assert row.same_state(model.rows[entity_id]), entity_id

    # ... and every poison pill on the DLT with provenance (the crash may have duplicated some
    # copies: count distinct original positions).
    dlt = [headers_dict(m.headers() or []) for m in read_topic(settings, settings.dlt_topic)]
    originals = {(h[ORIGINAL_PARTITION], h[ORIGINAL_OFFSET]) for h in dlt}
    assert len(originals) == model.dead_lettered
    assert all(h[ORIGINAL_TOPIC] == settings.topic for h in dlt)
    assert all(h[ERROR_KIND] == "permanent" for h in dlt)
    assert {h[DLT_REASON] for h in dlt} <= {"undecodable", "invalid", "conflict"}


def test_sigkill_mid_stream_loses_nothing_sqlite(settings: Settings, start_worker: object) -> None:
    _run_with_crash(settings, start_worker)


@pytest.mark.postgres
def test_sigkill_mid_stream_loses_nothing_postgres(
    settings: Settings, start_worker: object
) -> None:
    url = postgres_url_or_skip()
    table = f"e2e_{settings.group.lower()}"
    pg_settings = settings.model_copy(update={"sink_url": f"{url}?table={table}"})
    try:
        _run_with_crash(pg_settings, start_worker)
    finally:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
