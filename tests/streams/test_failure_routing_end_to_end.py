"""Failure routing on a real broker with a failing downstream, and crashes between steps.

* A downstream failing transiently (20%), then down for 30 s: every event ends applied or
  dead-lettered with a reason, the books balance, no retry copy was applied before its due
  time, and the retry topics stayed within the retry budget.
* A worker killed between "retry/DLT copy acked" and "offset committed", and between "sink
  applied" and "offset committed": the final state is still exact.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.reference_model import ReferenceModel
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticRecord, SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.failpoints import CRASH_EXIT_CODE
from streams.failures.routing import (
    DLT_REASON,
    DUE_MS,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    headers_dict,
)
from streams.kafka.offsets import read_topic
from streams.ops.observe import (
    TERMINAL_OUTCOMES,
    histogram_quantile,
    outcome_totals,
    scrape,
    scrape_total,
)
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _load(
    count: int, seed: int, poison_rate: float = 0.002, entities: int = 1_000
) -> list[SyntheticRecord]:
    spec = SyntheticSpec(count=count, entities=entities, poison_rate=poison_rate, seed=seed)
    return list(generate(spec, AvroCodec(EventLimits())))


def _publish(
    settings: Settings, records: list[SyntheticRecord], rate_per_s: float | None = None
) -> dict[int, int]:
    report = publish(
        make_producer(settings),
        settings.topic,
        ((r.key.encode(), r.value) for r in records),
        rate_per_s=rate_per_s,
    )
    assert report.published == len(records) and not report.failed
    return report.end_offsets


def _sink_rows(settings: Settings) -> dict[str, object]:
    sink = open_sink(settings.sink_url)
    try:
        return dict(sink.snapshot())
    finally:
        sink.close()


def test_transient_faults_then_outage(
    settings: Settings, start_worker: object, tmp_path: Path
) -> None:
    control = tmp_path / "sim.json"
    db = tmp_path / "sim.db"
    write_conditions(control, SimConditions(latency_ms=1.0, error_rate=0.2))
    budget_ratio, budget_floor, budget_window = 0.05, 20, 60.0
    settings = settings.model_copy(update={"sink_url": f"sim://?db={db}&control={control}&seed=3"})
    ensure_topics(settings)
    # ~2 events per entity: a retried event is often its entity's last, so its row shows
    # when it was applied (checked against its due time below).
    records = _load(10_000, seed=21, entities=5_000)

    worker: WorkerProcess = start_worker(  # type: ignore[operator]
        settings,
        RECON_INLINE_ATTEMPTS="1",
        RECON_RETRY_BUDGET_RATIO=str(budget_ratio),
        RECON_RETRY_BUDGET_FLOOR=str(budget_floor),
        RECON_RETRY_BUDGET_WINDOW_S=str(budget_window),
        RECON_CIRCUIT_OPEN_S="0.5",
        RECON_CIRCUIT_MAX_OPEN_S="2",
        # Small batches: a failed batch fits the (all-or-nothing) retry budget early on.
        RECON_BATCH_MAX="50",
    )
    started = time.monotonic()
    # Paced upstream (~25 s of traffic) so records keep arriving through every phase.
    result: dict[str, dict[int, int]] = {}
    publisher = threading.Thread(
        target=lambda: result.update(end_offsets=_publish(settings, records, rate_per_s=400)),
        daemon=True,
    )
    publisher.start()
    time.sleep(12)  # phase 1: 20% transient failures
    assert worker.proc.poll() is None, worker.log()[-3000:]
    write_conditions(control, SimConditions(latency_ms=1.0, outage=True))
    time.sleep(30)  # phase 2: the downstream is down
    outage_outcomes = outcome_totals([worker.metrics_url])
    write_conditions(control, SimConditions(latency_ms=1.0))  # phase 3: recovered
    publisher.join(timeout=120)
    end_offsets = result["end_offsets"]
    wait_for_commits(settings, settings.topic, end_offsets, 180, [worker])
    for tier_topic in settings.retry_topics:  # retry tiers drained too
        _wait_tier_drained(settings, tier_topic, worker)
    totals = outcome_totals([worker.metrics_url])
    elapsed = time.monotonic() - started

    # Books balance: every record reached exactly one final outcome.
    assert sum(totals[o] for o in TERMINAL_OUTCOMES) == len(records), totals
    # The circuit opened during the outage, and held records instead of burning tiers.
    assert scrape_total(worker.metrics_url, "recon_circuit_opened_total") >= 1
    assert outage_outcomes["retried"] <= totals["retried"]
    # The retry budget bound: copies to retry tiers within ratio x consumed + floor per window.
    retry_copies = sum(1 for t in settings.retry_topics for _ in read_topic(settings, t))
    windows = int(elapsed // budget_window) + 1
    consumed = scrape_total(worker.metrics_url, "recon_records_consumed_total")
    assert retry_copies <= budget_ratio * consumed + budget_floor * windows, retry_copies
    assert retry_copies > 0  # the faults really did route records through the tiers
    assert scrape_total(worker.metrics_url, "recon_retry_budget_holds_total") > 0

    # The sink is exact: each entity at its highest-version event that was not dead-lettered
    # (an event whose every published copy exhausted the tiers legitimately never applied).
    codec = AvroCodec(EventLimits())
    dead_ids: Counter[str] = Counter()
    for msg in read_topic(settings, settings.dlt_topic):
        if headers_dict(msg.headers() or []).get(DLT_REASON) == "retries_exhausted":
            dead_ids[codec.decode(msg.value() or b"").event_id] += 1
    published_ids = Counter(r.event.event_id for r in records if r.event is not None)
    expected = ExpectedState().observe_all(
        r.event
        for r in records
        if r.event is not None and dead_ids[r.event.event_id] < published_ids[r.event.event_id]
    )
    rows = _sink_rows(settings)
    assert expected.verify(rows) == []  # type: ignore[arg-type]
    applied_after_due = 0
    for tier_topic in settings.retry_topics:
        for msg in read_topic(settings, tier_topic):
            headers = headers_dict(msg.headers() or [])
            key = (msg.key() or b"").decode()
            row = rows.get(key)
            event = codec.decode(msg.value() or b"")
            # An event published once reached the sink only through its retry copy (a
            # transient failure writes nothing), so its row shows when that copy applied.
            once = published_ids[event.event_id] == 1
            if once and row is not None and row.last_event_id == event.event_id:  # type: ignore[attr-defined]
                assert row.updated_at_ms >= int(headers[DUE_MS]), (key, headers)  # type: ignore[attr-defined]
                applied_after_due += 1
    assert applied_after_due > 0
    # How late retry copies were processed after their due time (issue target: p99 <= 1 s).
    samples = scrape(worker.metrics_url)
    p50 = histogram_quantile(samples, "recon_retry_lateness_seconds", 0.5)
    p99 = histogram_quantile(samples, "recon_retry_lateness_seconds", 0.99)
    print(f"retry lateness after due: p50 <= {p50}s, p99 <= {p99}s; retry copies {retry_copies}")
    assert p99 is not None

    dlt = [headers_dict(m.headers() or []) for m in read_topic(settings, settings.dlt_topic)]
    assert len(dlt) == totals["dead_lettered"]
    assert {h[DLT_REASON] for h in dlt} <= {
        "undecodable",
        "invalid",
        "conflict",
        "retries_exhausted",
    }
    assert worker.stop() == 0


def _wait_tier_drained(settings: Settings, topic: str, worker: WorkerProcess) -> None:
    ends: dict[int, int] = {}
    for msg in read_topic(settings, topic, idle_timeout_s=1.0):
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    if ends:
        wait_for_commits(settings, topic, ends, 120, [worker])


@pytest.mark.parametrize("failpoint", ["after_forward:2", "after_apply:3"])
def test_crash_between_steps_loses_nothing(
    settings: Settings, start_worker: object, failpoint: str
) -> None:
    ensure_topics(settings)
    codec = AvroCodec(EventLimits())
    records = _load(6_000, seed=5, poison_rate=0.01)
    model = ReferenceModel(codec)
    for record in records:
        model.observe(record.key, record.value)
    end_offsets = _publish(settings, records)

    crashing: WorkerProcess = start_worker(  # type: ignore[operator]
        settings, RECON_FAILPOINT=failpoint, RECON_BATCH_MAX="100"
    )
    assert crashing.proc.wait(timeout=120) == CRASH_EXIT_CODE, crashing.log()[-3000:]
    restarted: WorkerProcess = start_worker(settings)  # type: ignore[operator]
    wait_for_commits(settings, settings.topic, end_offsets, 180, [restarted])
    replayed = outcome_totals([restarted.metrics_url])
    assert restarted.stop() == 0

    rows = _sink_rows(settings)
    assert set(rows) == set(model.rows)
    for entity_id, row in rows.items():
        assert row.same_state(model.rows[entity_id]), entity_id  # type: ignore[attr-defined]
    dlt = [headers_dict(m.headers() or []) for m in read_topic(settings, settings.dlt_topic)]
    originals = {(h[ORIGINAL_PARTITION], h[ORIGINAL_OFFSET]) for h in dlt}
    assert len(originals) == model.dead_lettered
    if failpoint.startswith("after_forward"):
        # The crashed batch's DLT copies were acked but their offsets not committed: the
        # restart produced them again. Duplicated copies, no lost ones.
        assert len(dlt) > len(originals)
    else:
        # The crashed batch was applied but not committed: replayed, it changes nothing.
        assert replayed["duplicate"] + replayed["stale"] > model.counts["duplicate"]
