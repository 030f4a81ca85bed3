"""``recon replay`` offset resets: parsing, planning and applying against a real broker, the
dry run, and the refusal while the group has a live member."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.cli import main
from streams.kafka.client_config import confluent_config
from streams.kafka.groups import describe_group, group_offsets
from streams.kafka.offset_reset import (
    InvalidTarget,
    ToEarliest,
    ToOffsets,
    ToTimestamp,
    apply_reset,
    parse_offset_specs,
    parse_timestamp_ms,
    plan_reset,
)
from streams.publish import make_producer
from streams.settings import Settings
from streams.topics import ensure_topics

T0_MS = 1_700_000_000_000


# --- parsing ---------------------------------------------------------------------------------


def test_parse_offset_specs() -> None:
    assert parse_offset_specs(["0:120", "3:0"]) == {0: 120, 3: 0}
    for bad in (["0"], ["a:1"], ["0:-1"], ["0:1", "0:2"], []):
        with pytest.raises(InvalidTarget):
            parse_offset_specs(bad)


def test_parse_timestamp() -> None:
    assert parse_timestamp_ms("1700000000000") == T0_MS
    assert parse_timestamp_ms("2023-11-14T22:13:20Z") == T0_MS
    assert parse_timestamp_ms("2023-11-14T23:13:20+01:00") == T0_MS
    assert parse_timestamp_ms("2023-11-14T22:13:20.5") == T0_MS + 500  # naive = UTC
    with pytest.raises(InvalidTarget):
        parse_timestamp_ms("yesterday")


# --- against the broker ----------------------------------------------------------------------


def produce(settings: Settings, counts: dict[int, tuple[int, int]]) -> None:
    """``counts[p] = (n, first_ts_offset_s)``: n records, one second apart. Each partition's
    records go in several batches (flushes) so a broker answering per batch shows it."""
    producer = make_producer(settings, **{"linger.ms": 20})
    for partition, (count, start_s) in counts.items():
        for i in range(count):
            ts = T0_MS + (start_s + i) * 1000
            producer.produce(settings.topic, value=b"v", partition=partition, timestamp=ts)
            if i % 4 == 3:
                producer.flush(10)
    assert producer.flush(30) == 0


def commit(settings: Settings, offsets: dict[int, int]) -> None:
    consumer = Consumer(confluent_config(settings, **{"group.id": settings.group}))
    try:
        tps = [TopicPartition(settings.topic, p, o) for p, o in offsets.items()]
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()


def committed(settings: Settings) -> dict[int, int]:
    return group_offsets(settings, settings.group).get(settings.topic, {})


@pytest.fixture
def loaded(settings: Settings) -> Settings:
    ensure_topics(settings)
    # p0: ts T0+0..9 s; p1: T0+20..29 s; p2: empty; p3: ts T0+0..2 s
    produce(settings, {0: (10, 0), 1: (10, 20), 3: (3, 0)})
    commit(settings, {0: 10, 1: 10, 3: 3})
    return settings


def _flags(settings: Settings) -> list[str]:
    return [
        "--bootstrap-servers",
        settings.bootstrap_servers,
        "--topic",
        settings.topic,
        "--group",
        settings.group,
    ]


@pytest.mark.broker
def test_to_timestamp_finds_the_first_record_at_or_after_it(loaded: Settings) -> None:
    settings = loaded

    def after(ts_offset_s: float) -> dict[int, int]:
        target = ToTimestamp(T0_MS + int(ts_offset_s * 1000))
        return {
            c.partition: c.after
            for c in plan_reset(settings, settings.group, settings.topic, target)
        }

    assert after(-100) == {0: 0, 1: 0, 2: 0, 3: 0}
    assert after(5.5) == {0: 6, 1: 0, 2: 0, 3: 3}
    assert after(9) == {0: 9, 1: 0, 2: 0, 3: 3}
    assert after(25) == {0: 10, 1: 5, 2: 0, 3: 3}
    assert after(1000) == {0: 10, 1: 10, 2: 0, 3: 3}  # nothing that late: the end


@pytest.mark.broker
def test_plan_and_apply_to_offsets(loaded: Settings) -> None:
    settings = loaded
    changes = plan_reset(settings, settings.group, settings.topic, ToOffsets({0: 4, 2: 0}))
    assert [(c.partition, c.before, c.after, c.low, c.high, c.delta) for c in changes] == [
        (0, 10, 4, 0, 10, 6),
        (2, None, 0, 0, 0, 0),
    ]
    assert apply_reset(settings, settings.group, changes) == {
        (settings.topic, 0): 4,
        (settings.topic, 2): 0,
    }
    assert committed(settings) == {0: 4, 1: 10, 2: 0, 3: 3}  # p1, p3 left alone

    with pytest.raises(InvalidTarget, match=r"outside partition 0's range \[0, 10\]"):
        plan_reset(settings, settings.group, settings.topic, ToOffsets({0: 11}))
    with pytest.raises(InvalidTarget, match="no partition 9"):
        plan_reset(settings, settings.group, settings.topic, ToOffsets({9: 0}))
    with pytest.raises(InvalidTarget, match="does not exist"):
        plan_reset(settings, settings.group, "no-such-topic", ToEarliest())


@pytest.mark.broker
def test_cli_dry_run_changes_nothing_and_real_run_does(
    loaded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = loaded
    before = committed(settings)
    assert main(["replay", "--to-earliest", "--dry-run", *_flags(settings)]) == 0
    out = capsys.readouterr().out
    assert "planned reset" in out and "dry run: nothing changed" in out
    assert committed(settings) == before

    iso = datetime.fromtimestamp((T0_MS + 25_000) / 1000, UTC).isoformat()
    assert main(["replay", "--to-timestamp", iso, *_flags(settings)]) == 0
    out = capsys.readouterr().out
    assert "committed offsets now" in out
    assert "reset 4 partition(s): 5 to replay, 0 skipped" in out
    assert committed(settings) == {0: 10, 1: 5, 2: 0, 3: 3}

    assert main(["replay", "--to-offset", "0:99", *_flags(settings)]) == 2
    assert "outside partition 0's range" in capsys.readouterr().err
    assert committed(settings) == {0: 10, 1: 5, 2: 0, 3: 3}


@pytest.mark.broker
def test_refuses_while_the_group_has_a_live_member(
    loaded: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = loaded
    member = Consumer(
        confluent_config(
            settings,
            **{
                "group.id": settings.group,
                "session.timeout.ms": 6000,
                "max.poll.interval.ms": 10000,
                "enable.auto.commit": False,
            },
        )
    )
    try:
        member.subscribe([settings.topic])
        deadline = time.monotonic() + 60
        while not member.assignment() and time.monotonic() < deadline:
            member.poll(0.2)
        assert member.assignment(), "the member never got an assignment"
        assert describe_group(settings, settings.group).live

        assert main(["replay", "--to-earliest", *_flags(settings)]) == 2
        err = capsys.readouterr().err
        assert "refused" in err and "stop its workers first (or pass --force)" in err
        assert committed(settings) == {0: 10, 1: 10, 3: 3}

        # A dry run still shows the plan, with the warning.
        assert main(["replay", "--to-earliest", "--dry-run", *_flags(settings)]) == 0
        assert "a real run would be refused" in capsys.readouterr().out
    finally:
        member.close()
    # Left cleanly: the group is empty and the reset goes through.
    assert main(["replay", "--to-earliest", *_flags(settings)]) == 0
    assert committed(settings) == {0: 0, 1: 0, 2: 0, 3: 0}


def test_from_dlt_is_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.failures.dlt as dlt

    calls: list[Any] = []

    def fake(args: Any, settings: Settings) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(dlt, "redrive_command", fake)
    assert main(["replay", "--from-dlt", "--dry-run", "--reason", "conflict"]) == 0
    assert len(calls) == 1 and calls[0].reason == ["conflict"]


def test_targets_are_mutually_exclusive_and_required(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["replay"], ["replay", "--to-earliest", "--to-offset", "0:1"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()
