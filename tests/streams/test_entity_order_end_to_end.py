"""Per-entity ordering (RECON_ENTITY_ORDERING) on a real broker and real workers.

How order is observed: the ``sim://`` downstream logs every row it writes (``log=``), and
the workers apply one record per batch (``RECON_BATCH_MAX=1``), so every event that is applied
is one line of that log -- none is folded into a later event's row. The load has no
duplicates and no reorders, so each entity's versions are its event order. An event applied
after a later one of its entity would be *stale* and never written: so "every event that
was not dead-lettered is in the log, and each entity's versions there are increasing" is
exactly "every entity's events were applied in order". Replays after a crash change
nothing there (a replayed event is a no-op and writes nothing).

* ordering on, a transient fault phase while later events keep arriving: order holds for
  every entity, records were parked, the books balance, nothing applied before its due time;
  the same load with ordering off applies some events out of order (the contrast);
* ordering on, the worker SIGKILLed while records are parked, restarted: its ledger is
  rebuilt from the retry tiers and order still holds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticRecord, SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.failures.routing import DUE_MS, PARKED_BEHIND, headers_dict
from streams.kafka.offsets import read_topic
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals, scrape_total
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, wait_for_commits
from tests.streams.test_failure_routing_end_to_end import _publish

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CODEC = AvroCodec(EventLimits())
WORKER_ENV = {
    "RECON_BATCH_MAX": "1",  # one event per write: every applied event is one log line
    "RECON_INLINE_ATTEMPTS": "1",
    "RECON_CIRCUIT_ENABLED": "false",  # failures go to the tiers instead of being held
    "RECON_RETRY_BUDGET_ENABLED": "false",
    "RECON_GOVERNOR_ENABLED": "false",
    "RECON_FETCH_MAX_WAIT_MS": "100",
}


def _load(count: int, entities: int, seed: int) -> list[SyntheticRecord]:
    spec = SyntheticSpec(
        count=count,
        entities=entities,
        duplicate_rate=0.0,
        reorder_rate=0.0,
        poison_rate=0.0,
        delete_rate=0.0,
        seed=seed,
    )
    records = list(generate(spec, CODEC))
    versions: dict[str, int] = {}
    for record in records:  # precondition: publish order is version order, per entity
        assert record.event is not None
        assert record.event.version == versions.get(record.key, 0) + 1
        versions[record.key] = record.event.version
    return records


def _sim(
    settings: Settings, tmp_path: Path, conditions: SimConditions
) -> tuple[Settings, Path, Path]:
    control, log = tmp_path / "sim.json", tmp_path / "writes.jsonl"
    write_conditions(control, conditions)
    url = f"sim://?db={tmp_path / 'sim.db'}&control={control}&latency_ms=1&seed=5&log={log}"
    return settings.model_copy(update={"sink_url": url}), control, log


def _drain(settings: Settings, end_offsets: dict[int, int], worker: WorkerProcess) -> None:
    wait_for_commits(settings, settings.topic, end_offsets, 240, [worker])
    for _ in range(3):  # a tier can feed another: until no tier has uncommitted records
        for tier_topic in settings.retry_topics:
            ends: dict[int, int] = {}
            for msg in read_topic(settings, tier_topic, idle_timeout_s=1.0):
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                ends[partition] = max(ends.get(partition, 0), offset + 1)
            if ends:
                wait_for_commits(settings, tier_topic, ends, 240, [worker])


def _writes(log: Path) -> list[tuple[str, int, str, int]]:
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return [tuple(json.loads(line)) for line in lines]  # type: ignore[misc]


def _dead_lettered(settings: Settings) -> set[str]:
    return {
        CODEC.decode(m.value() or b"").event_id for m in read_topic(settings, settings.dlt_topic)
    }


def _order_violations(
    records: list[SyntheticRecord], writes: list[tuple[str, int, str, int]], dead: set[str]
) -> tuple[list[str], int]:
    """(entities whose events did not all apply in order, entities checked)."""
    written: dict[str, list[int]] = defaultdict(list)
    for entity, version, _, _ in writes:
        written[entity].append(version)
    expected: dict[str, list[int]] = defaultdict(list)
    for record in records:
        assert record.event is not None
        if record.event.event_id not in dead:
            expected[record.key].append(record.event.version)
    bad = [e for e, versions in expected.items() if written.get(e, []) != versions]
    return bad, len(expected)


def _tier_copies(settings: Settings) -> list[dict[str, str]]:
    copies = []
    for tier_topic in settings.retry_topics:
        for msg in read_topic(settings, tier_topic):
            headers = headers_dict(msg.headers() or [])
            headers["event_id"] = CODEC.decode(msg.value() or b"").event_id
            copies.append(headers)
    return copies


@pytest.mark.parametrize("ordering", [True, False], ids=["ordering-on", "ordering-off"])
def test_transient_faults_keep_each_entity_in_order(
    settings: Settings, start_worker: object, tmp_path: Path, ordering: bool
) -> None:
    settings = settings.model_copy(update={"retry_delays": (0.5, 1.0, 2.0)})
    settings, control, log = _sim(settings, tmp_path, SimConditions(error_rate=0.25))
    ensure_topics(settings)
    records = _load(1_500, entities=100, seed=11)
    started = time.monotonic()
    worker: WorkerProcess = start_worker(  # type: ignore[operator]
        settings, RECON_ENTITY_ORDERING=str(ordering).lower(), **WORKER_ENV
    )
    result: dict[str, dict[int, int]] = {}
    publisher = threading.Thread(
        target=lambda: result.update(ends=_publish(settings, records, rate_per_s=150)), daemon=True
    )
    publisher.start()  # ~10 s of traffic; each entity gets an event every ~0.7 s
    time.sleep(8)  # the fault phase, while later events of the same entities keep arriving
    write_conditions(control, SimConditions())
    publisher.join(timeout=60)
    _drain(settings, result["ends"], worker)
    totals = outcome_totals([worker.metrics_url])
    redelivered = scrape_total(worker.metrics_url, "recon_records_redelivered_total")
    elapsed = time.monotonic() - started

    dead = _dead_lettered(settings)
    writes = _writes(log)
    bad, checked = _order_violations(records, writes, dead)
    copies = _tier_copies(settings)
    parked = sum(1 for h in copies if PARKED_BEHIND in h)
    print(
        f"ordering={'on' if ordering else 'off'}: {checked} entities checked, {len(bad)} out "
        f"of order; outcomes {dict(totals)}; {len(copies)} tier copies ({parked} parked); "
        f"{elapsed:.1f}s"
    )
    # The books balance either way: parked, like retried, is not a final outcome.
    assert sum(totals[o] for o in TERMINAL_OUTCOMES) == len(records) + redelivered, totals
    assert totals["retried"] > 0 and totals["dead_lettered"] == len(dead)
    rows = dict(open_sink(settings.sink_url).snapshot())
    expected = ExpectedState().observe_all(
        r.event for r in records if r.event is not None and r.event.event_id not in dead
    )
    assert expected.verify(rows) == []  # type: ignore[arg-type]
    if not ordering:
        assert bad and totals["stale"] > 0 and "parked" not in totals
        return
    assert bad == [], bad[:10]
    assert totals["stale"] <= redelivered
    assert parked >= totals["parked"] > 0
    # Nothing was applied before its due time (every copy of an applied event was due first).
    applied_at = {event_id: ms for _, _, event_id, ms in writes}
    checked_dues = 0
    for headers in copies:
        at = applied_at.get(headers["event_id"])
        if at is not None:
            assert at >= int(headers[DUE_MS]), headers
            checked_dues += 1
    assert checked_dues > 0
    assert "not co-partitioned" not in worker.log()
    assert worker.stop() == 0


def test_restart_rebuilds_the_ledger_from_the_retry_tiers(
    settings: Settings, start_worker: object, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"retry_delays": (2.0, 4.0, 8.0)})
    # Down from the start: nothing applies before the crash, everything waits in the tiers.
    settings, control, log = _sim(settings, tmp_path, SimConditions(outage=True))
    ensure_topics(settings)
    records = _load(600, entities=60, seed=12)
    env = {"RECON_ENTITY_ORDERING": "true", **WORKER_ENV}
    first: WorkerProcess = start_worker(settings, **env)  # type: ignore[operator]
    end_offsets = _publish(settings, records)
    deadline = time.monotonic() + 90
    parked = 0.0
    while time.monotonic() < deadline and parked < 50:
        totals = outcome_totals([first.metrics_url])
        parked = totals["parked"]
        assert first.proc.poll() is None, first.log()[-3000:]
        time.sleep(0.3)
    assert parked >= 50, first.log()[-3000:]
    first.kill()  # SIGKILL with records parked in the tiers and offsets not all committed
    write_conditions(control, SimConditions())  # the downstream is back
    second: WorkerProcess = start_worker(settings, **env)  # type: ignore[operator]
    _drain(settings, end_offsets, second)

    assert "rebuilt in" in second.log()
    rebuilt = [line for line in second.log().splitlines() if "rebuilt in" in line]
    dead = _dead_lettered(settings)
    bad, checked = _order_violations(records, _writes(log), dead)
    print(
        f"restart: parked before the kill {parked:.0f}; {checked} entities checked, "
        f"{len(bad)} out of order, {len(dead)} dead-lettered; {rebuilt[-1].strip()}"
    )
    assert bad == [], bad[:10]
    rows = dict(open_sink(settings.sink_url).snapshot())
    expected = ExpectedState().observe_all(
        r.event for r in records if r.event is not None and r.event.event_id not in dead
    )
    assert expected.verify(rows) == []  # type: ignore[arg-type]
    assert second.stop() == 0
