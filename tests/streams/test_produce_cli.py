"""``recon produce --file``: valid lines are published keyed by entity; each invalid line is
reported with its number and nothing is published for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.codec import AvroCodec
from streams import cli
from streams.kafka.offsets import read_topic
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.broker


def _event(n: int, entity: str) -> str:
    return json.dumps(
        {
            "event_id": f"e-{n}",
            "entity_id": entity,
            "version": n,
            "op": "upsert",
            "fields": {"balance": 10.5 * n, "status": "open"},
            "occurred_at": "2026-11-22T10:00:00Z",
            "source": "billing",
        }
    )


def test_file_with_bad_lines(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_topics(settings)
    lines = [
        _event(1, "acct-1"),
        "{not json",
        _event(2, "acct-2"),
        json.dumps({"event_id": "e-x", "entity_id": "bad id", "version": 1, "op": "upsert"}),
        "",
        _event(3, "acct-1"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["produce", "--file", str(path), "--no-lanes"]
    args += ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic]

    assert cli.main(args) == 1  # some lines were rejected
    captured = capsys.readouterr()
    assert "published 3" in captured.out and "rejected 2" in captured.out
    assert "line 2: rejected: not JSON" in captured.err
    assert "line 4: rejected:" in captured.err
    assert "line 1:" not in captured.err and "line 6:" not in captured.err

    records = list(read_topic(settings, settings.topic, idle_timeout_s=1.5))
    codec = AvroCodec()
    events = sorted((codec.decode(m.value() or b"") for m in records), key=lambda e: e.version)
    assert [(e.event_id, e.entity_id) for e in events] == [
        ("e-1", "acct-1"),
        ("e-2", "acct-2"),
        ("e-3", "acct-1"),
    ]
    assert {(m.key() or b"").decode() for m in records} == {"acct-1", "acct-2"}
    by_key = {(m.key() or b"").decode(): m.partition() for m in records}
    assert len({m.partition() for m in records if m.key() == b"acct-1"}) == 1  # one partition
    assert by_key["acct-1"] is not None


def test_missing_file_is_a_clear_usage_error(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["produce", "--file", "/nonexistent/events.jsonl"]
    args += ["--bootstrap-servers", settings.bootstrap_servers, "--topic", settings.topic]
    assert cli.main(args) == 2
    assert "cannot read /nonexistent/events.jsonl" in capsys.readouterr().err
