"""``recon lag`` against a real broker: exact numbers from committed offsets and fetch
high watermarks, on the main topic and a retry tier."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.cli import main
from streams.kafka.client_config import confluent_config
from streams.kafka.lag import Status, consumed_topics, measure_lag
from streams.publish import make_producer
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.broker

NOW_S = 2_000_000_000.0  # the injected clock
T0_MS = int(NOW_S * 1000) - 600_000  # records are ten minutes old and one second apart


def ts_ms(offset: int) -> int:
    return T0_MS + offset * 1000


def produce(settings: Settings, topic: str, counts: dict[int, int]) -> None:
    """``counts[p]`` records to partition p, timestamped ``ts_ms(offset)``; linger makes
    multi-record batches (the case where ListOffsets LATEST is wrong on the embedded broker)."""
    producer = make_producer(settings, **{"linger.ms": 50})
    for partition, count in counts.items():
        for offset in range(count):
            producer.produce(
                topic, key=b"k", value=b"v", partition=partition, timestamp=ts_ms(offset)
            )
    assert producer.flush(30) == 0


def commit(settings: Settings, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer(confluent_config(settings, **{"group.id": settings.group}))
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


@pytest.fixture
def loaded(settings: Settings) -> Settings:
    ensure_topics(settings)
    retry1 = settings.retry_topics[0]
    produce(settings, settings.topic, {0: 30, 1: 20, 2: 10})
    produce(settings, retry1, {2: 5})
    commit(settings, {(settings.topic, 0): 12, (settings.topic, 1): 20, (retry1, 2): 1})
    return settings


def test_lag_in_messages_and_seconds_is_exact(loaded: Settings) -> None:
    settings = loaded
    retry1, retry2 = settings.retry_topics
    measured = measure_lag(settings, clock=lambda: NOW_S)
    rows = {(p.topic, p.partition): p for p in measured.partitions}
    topics = (
        settings.topic,
        f"{settings.topic}.critical",
        f"{settings.topic}.bulk",
        retry1,
        retry2,
    )
    assert consumed_topics(settings) == list(topics)
    assert set(rows) == {(t, p) for t in topics for p in range(4)}

    def row(topic: str, partition: int) -> tuple[object, ...]:
        p = rows[(topic, partition)]
        return p.committed, p.high_watermark, p.lag_messages, p.lag_seconds

    assert row(settings.topic, 0) == (12, 30, 18, NOW_S - ts_ms(12) / 1000)
    assert row(settings.topic, 1) == (20, 20, 0, 0.0)  # caught up
    # Never committed: measured from the log start, the oldest record's age.
    assert row(settings.topic, 2) == (None, 10, 10, NOW_S - ts_ms(0) / 1000)
    assert row(settings.topic, 3) == (None, 0, 0, 0.0)  # empty
    assert row(retry1, 2) == (1, 5, 4, NOW_S - ts_ms(1) / 1000)
    assert all(row(retry2, p) == (None, 0, 0, 0.0) for p in range(4))
    assert measured.total() == 32 and measured.total(settings.topic) == 28
    assert measured.members == 0 and measured.state == "EMPTY"


def test_cli_json_document(
    loaded: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = loaded
    monkeypatch.setenv("RECON_RETRY_DELAYS", "0.5s,1s")
    flags = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic]
    assert main(["lag", "--json", *flags, "--group", settings.group]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["group"] == settings.group
    assert document["status"] == Status.STOP.name  # lag and nobody consuming
    assert document["totals"][settings.topic]["lag_messages"] == 28
    assert document["totals"][settings.retry_topics[0]]["lag_messages"] == 4
    first = document["partitions"][0]
    assert (first["topic"], first["partition"], first["lag_messages"]) == (settings.topic, 0, 18)
    assert first["status"] == "STOP" and first["reason"] == "no live member; lag 18"
    assert document["partitions"][1]["status"] == "OK"
    # Seconds are measured against the real clock here: at least the records' age.
    assert first["lag_seconds"] >= time.time() - ts_ms(12) / 1000 - 5


def test_cli_watch_refreshes_a_bounded_number_of_times(
    loaded: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = loaded
    monkeypatch.setenv("RECON_RETRY_DELAYS", "0.5s,1s")
    flags = ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic]
    args = ["lag", "--watch", "--json", "--iterations", "3", "--interval", "0.1"]
    assert main([*args, *flags, "--group", settings.group]) == 0
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(documents) == 3
    assert {d["totals"][settings.topic]["lag_messages"] for d in documents} == {28}

    assert main(["lag", "--watch", "--iterations", "1", *flags, "--group", settings.group]) == 0
    table = capsys.readouterr().out
    assert f"group {settings.group}" in table and "no live member; lag 18" in table


def test_unknown_group_has_everything_to_consume(loaded: Settings) -> None:
    settings = loaded
    measured = measure_lag(settings, group="nobody-" + settings.group, clock=lambda: NOW_S)
    assert measured.total(settings.topic) == 60
    assert all(p.committed is None for p in measured.partitions)
