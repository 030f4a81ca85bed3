"""``recon replay`` with a real worker: refused while the worker is live, a dry run changes
nothing, and a replayed range after the worker processed it changes nothing in the sink --
every replayed event comes out a duplicate or stale, none applied.

The replay runs in the worker's own group when the broker released the stopped worker's
membership (Apache Kafka does). The embedded broker does not -- it keeps an aiokafka member
registered after it leaves, so the group looks live and refuses offset changes until another
member joins -- and there the range is replayed through a second group positioned with
``recon replay`` (same sink, same records, same worker code).
"""

from __future__ import annotations

import pytest

from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.sinks import open_sink
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.cli import main
from streams.kafka.groups import describe_group
from streams.kafka.offsets import committed_offsets
from streams.ops.observe import outcome_totals
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import wait_for_commits

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 3_000


def _rows(settings: Settings) -> dict[str, object]:
    sink = open_sink(settings.sink_url)
    try:
        return dict(sink.snapshot())
    finally:
        sink.close()


def test_replay_after_processing_applies_nothing_twice(
    settings: Settings, start_worker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_topics(settings)
    spec = SyntheticSpec(
        count=EVENTS, entities=500, duplicate_rate=0.05, reorder_rate=0.05, poison_rate=0.0, seed=5
    )
    records = list(generate(spec, AvroCodec(EventLimits())))
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    report = publish(
        make_producer(settings), settings.topic, ((r.key.encode(), r.value) for r in records)
    )
    assert report.published == EVENTS
    end = report.end_offsets
    flags = [
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--topic",
        settings.topic,
        "--group",
        settings.group,
    ]

    worker = start_worker(settings)  # type: ignore[operator]
    wait_for_commits(settings, settings.topic, end, 180, [worker])

    # Live worker: refused, nothing changed.
    assert main(["replay", "--to-earliest", *flags]) == 2
    assert "refused" in capsys.readouterr().err
    assert committed_offsets(settings, settings.group, settings.topic) == end

    assert worker.stop() == 0
    before = _rows(settings)
    assert expected.verify(before) == []  # type: ignore[arg-type]
    if describe_group(settings, settings.group).live:
        # Embedded broker: the stopped worker still counts as a member; still refused.
        assert main(["replay", "--to-earliest", *flags]) == 2
        assert "does not list its members" in capsys.readouterr().err
        replay = settings.model_copy(update={"group": f"{settings.group}-replay"})
        rest = [f"{p}:{o}" for p, o in sorted(end.items()) if p not in (0, 1)]
        flags[flags.index("--group") + 1] = replay.group
    else:
        replay, rest = settings, []

    # Dry run: the plan is printed, nothing changes.
    assert main(["replay", "--to-earliest", "--dry-run", *flags]) == 0
    assert "dry run: nothing changed" in capsys.readouterr().out
    positions = committed_offsets(replay, replay.group, settings.topic)
    assert positions == (end if replay is settings else {})

    # Replay all of partition 0 and the second half of partition 1.
    half = end[1] // 2
    assert main(["replay", "--to-offset", "0:0", f"1:{half}", *rest, *flags]) == 0
    replayed = end[0] + (end[1] - half)
    out = capsys.readouterr().out
    assert replay is not settings or f"{replayed} to replay, 0 skipped" in out
    assert committed_offsets(replay, replay.group, settings.topic) == {**end, 0: 0, 1: half}

    again = start_worker(replay)  # type: ignore[operator]
    wait_for_commits(replay, settings.topic, end, 180, [again])
    totals = outcome_totals([again.metrics_url])
    assert again.stop() == 0

    assert totals["applied"] == 0
    assert totals["duplicate"] + totals["stale"] == replayed
    assert totals["duplicate"] > 0
    assert set(totals) <= {"duplicate", "stale"}
    assert _rows(settings) == before  # row for row, updated_at included
