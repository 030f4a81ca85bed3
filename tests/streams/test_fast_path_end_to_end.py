"""The fast path (``RECON_FAST_PATH=1``, streams/kafka/fast_consumer.py) keeps the promises of
the per-message path: a SIGKILL mid-stream loses nothing, and a rebalance while records are in
flight neither loses nor regresses anything (commits only after apply)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.reference_model import ReferenceModel
from processors.sinks import open_sink
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.app import create_app
from streams.failures.routing import ORIGINAL_OFFSET, ORIGINAL_PARTITION, SourceRecord, headers_dict
from streams.kafka.fast_consumer import BulkConsumer, register_bulk_topic
from streams.kafka.offsets import committed_offsets, read_topic
from streams.ops.observe import outcome_totals
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits
from tests.streams.test_worker_end_to_end import _run_with_crash


def test_the_setting_installs_the_bulk_consumer(settings: Settings) -> None:
    fast = create_app(settings.model_copy(update={"fast_path": True}))
    assert isinstance(fast.consumer, BulkConsumer)
    lanes = {f"{settings.topic}.critical", f"{settings.topic}.bulk"}
    assert set(fast._recon_bulk) == {settings.topic} | lanes  # main and lanes, not retry tiers
    slow = create_app(settings.model_copy(update={"fast_path": False}))
    assert not isinstance(slow.consumer, BulkConsumer)

    async def handler(records: Sequence[SourceRecord]) -> None:
        pass

    with pytest.raises(RuntimeError):
        register_bulk_topic(slow, settings.topic, handler, 10)


@pytest.mark.broker
@pytest.mark.slow
def test_fast_path_sigkill_mid_stream_loses_nothing(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    def fast_worker(s: Settings, **env: str) -> WorkerProcess:
        return start_worker(s, RECON_FAST_PATH="1", **env)

    _run_with_crash(settings, fast_worker)


@pytest.mark.broker
@pytest.mark.slow
def test_fast_path_rebalance_mid_stream_loses_and_regresses_nothing(
    settings: Settings, start_worker: Callable[..., WorkerProcess], tmp_path: Any
) -> None:
    events = 30_000
    # A slow downstream (40 ms per load and per write) so the stream is still running when the
    # second worker joins and takes half of the partitions away from the first.
    sink_url = f"sim://?db={tmp_path}/sink.db&latency_ms=40"
    settings = settings.model_copy(update={"sink_url": sink_url})
    ensure_topics(settings)
    codec = AvroCodec(EventLimits())
    records = list(
        generate(SyntheticSpec(count=events, entities=3_000, poison_rate=0.002, seed=5), codec)
    )
    model = ReferenceModel(codec)
    for record in records:
        model.observe(record.key, record.value)
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )
    assert report.published == events and not report.failed

    first = start_worker(settings, RECON_FAST_PATH="1")
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        done = sum(committed_offsets(settings, settings.group, settings.topic).values())
        if done >= events // 5:
            break
        assert first.proc.poll() is None, first.log()[-3000:]
        time.sleep(0.2)
    assert done < events // 2, "the first worker went too fast to be rebalanced mid-stream"
    second = start_worker(settings, RECON_FAST_PATH="1")
    wait_for_commits(settings, settings.topic, report.end_offsets, 240, [first, second])
    # Both took part: the second worker got partitions from the first mid-stream.
    assert sum(outcome_totals([second.metrics_url]).values()) > 0
    assert sum(outcome_totals([first.metrics_url]).values()) > 0
    assert first.stop() == 0 and second.stop() == 0

    sink = open_sink(f"sqlite:///{tmp_path}/sink.db")
    try:
        rows = sink.snapshot()
    finally:
        sink.close()
    assert expected.verify(rows) == []
    assert set(rows) == set(model.rows)
    for entity_id, row in rows.items():
        assert row.same_state(model.rows[entity_id]), entity_id
    dlt = [headers_dict(m.headers() or []) for m in read_topic(settings, settings.dlt_topic)]
    assert len({(h[ORIGINAL_PARTITION], h[ORIGINAL_OFFSET]) for h in dlt}) == model.dead_lettered
