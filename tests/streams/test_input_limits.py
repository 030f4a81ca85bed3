"""Input limits are settings (``RECON_MAX_*``), reach every decoder, and a record over any of
them is dead-lettered with its reason -- never an exception out of the batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from processors.codec import AvroCodec
from processors.event import EventLimits, ReconEvent
from processors.sinks.memory import MemorySink
from streams.failures.routing import ERROR_KIND, ERROR_MESSAGE
from streams.settings import Settings
from tests.processors.strategies import make_event
from tests.streams.inprocess import CapturingSender, in_process

# Encodes anything encodable: the producer side of a hostile or misconfigured upstream.
UNCHECKED = AvroCodec(EventLimits(max_record_bytes=10_000_000))
THREE_STRINGS = {"s": "x" * 16, "t": "y" * 16, "u": "z" * 16}
# The size limit is exactly the size of this event (within every other limit).
AT_SIZE_LIMIT = make_event(entity_id="acct-1", fields=THREE_STRINGS, source="src")
LIMITS = EventLimits(
    max_record_bytes=len(UNCHECKED.encode_with(AT_SIZE_LIMIT, "current", check=False)),
    max_fields=3,
    max_field_name_len=8,
    max_string_len=16,
    max_id_len=12,
)

_ENV = {
    "RECON_MAX_RECORD_BYTES": ("max_record_bytes", LIMITS.max_record_bytes),
    "RECON_MAX_FIELDS": ("max_fields", 3),
    "RECON_MAX_FIELD_NAME_LEN": ("max_field_name_len", 8),
    "RECON_MAX_STRING_LEN": ("max_string_len", 16),
    "RECON_MAX_ID_LEN": ("max_id_len", 12),
}


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().event_limits == EventLimits()  # defaults unchanged
    for env, (_, value) in _ENV.items():
        monkeypatch.setenv(env, str(value))
    assert Settings().event_limits == LIMITS


@pytest.mark.parametrize("env", sorted(_ENV))
def test_nonsensical_limits_are_rejected(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, "0" if env != "RECON_MAX_FIELDS" else "-1")
    with pytest.raises(ValidationError, match=_ENV[env][0]):
        Settings()


def _encode(event: ReconEvent) -> bytes:
    return UNCHECKED.encode_with(event, "current", check=False)


def _ok(**overrides: Any) -> ReconEvent:
    values: dict[str, Any] = {"entity_id": "acct-1", "fields": {"a": 1}, "source": "src"}
    values.update(overrides)
    return make_event(**values)


# (event at the limit, event just over it, DLT reason, text in the error message)
CASES = [
    pytest.param(
        AT_SIZE_LIMIT,
        _ok(event_id="e" * 12, fields=THREE_STRINGS),
        "too_large",
        "over max_record_bytes=",
        id="record-bytes",
    ),
    pytest.param(
        _ok(fields={"a": 1, "b": 2, "c": 3}),
        _ok(fields={"a": 1, "b": 2, "c": 3, "d": 4}),
        "invalid",
        "over max_fields=3",
        id="fields",
    ),
    pytest.param(
        _ok(fields={"n" * 8: 1}),
        _ok(fields={"n" * 9: 1}),
        "invalid",
        "over max_field_name_len=8",
        id="field-name-length",
    ),
    pytest.param(
        _ok(fields={"s": "x" * 16}),
        _ok(fields={"s": "x" * 17}),
        "invalid",
        "over max_string_len=16",
        id="string-length",
    ),
    pytest.param(
        _ok(entity_id="e" * 12, event_id="ev-1"),
        _ok(entity_id="e" * 13, event_id="ev-1"),
        "invalid",
        "over max_id_len=12",
        id="entity-id-length",
    ),
    pytest.param(
        _ok(event_id="v" * 12),
        _ok(event_id="v" * 13),
        "invalid",
        "over max_id_len=12",
        id="event-id-length",
    ),
    pytest.param(
        _ok(entity_id="a.b_c:d@e/f", event_id="ev-1"),
        _ok(entity_id="a'; drop--", event_id="ev-1"),
        "invalid",
        "characters outside",
        id="id-charset",
    ),
    pytest.param(
        _ok(source="s" * 12),
        _ok(source="s" * 13),
        "invalid",
        "over max_id_len=12",
        id="source-length",
    ),
]


@pytest.mark.parametrize(("at_limit", "over_limit", "reason", "message"), CASES)
def test_a_record_over_a_limit_is_dead_lettered_with_its_reason(
    at_limit: ReconEvent, over_limit: ReconEvent, reason: str, message: str
) -> None:
    run = in_process(AvroCodec(LIMITS))
    good, bad = _encode(at_limit), _encode(over_limit)
    if reason == "too_large":
        assert len(good) == LIMITS.max_record_bytes < len(bad)
    result = run.run([good, bad], keys=[b"k1", b"k2"])  # never raises

    assert result.counts == {"applied": 1, "dead_lettered": 1}
    assert isinstance(run.sink, MemorySink)
    assert set(run.sink.snapshot()) == {at_limit.entity_id}
    (copy,) = run.sender.sent
    headers = dict(copy.headers)
    assert copy.topic.endswith(".dlt") and copy.value == bad and copy.key == b"k2"
    assert CapturingSender.reason(copy) == reason
    assert headers[ERROR_KIND] == b"permanent"
    assert message in headers[ERROR_MESSAGE].decode()


def test_the_size_limit_is_checked_before_parsing() -> None:
    # A huge buffer of garbage is refused on its length alone (no parser sees it).
    run = in_process(AvroCodec(LIMITS))
    result = run.run([b"\xc3\x01" + b"\xff" * 1_000_000])
    assert result.counts == {"dead_lettered": 1}
    assert CapturingSender.reason(run.sender.sent[0]) == "too_large"


def test_the_worker_app_and_the_publisher_use_the_configured_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import streams.app
    from streams.publish import RejectedLine, parse_json_lines

    seen: list[EventLimits | None] = []
    real_codec = streams.app.AvroCodec

    def recording_codec(limits: EventLimits | None = None) -> AvroCodec:
        seen.append(limits)
        return real_codec(limits)

    monkeypatch.setattr(streams.app, "AvroCodec", recording_codec)
    settings = Settings(
        sink_url="memory://", metrics_port=0, max_fields=3, max_string_len=16, max_id_len=12
    )
    streams.app.create_app(settings)
    assert seen == [settings.event_limits]

    # `recon produce` validates JSON lines against the same limits before publishing.
    line = '{"event_id":"e1","entity_id":"a","version":1,"op":"upsert",'
    line += '"occurred_at":"2026-01-01T00:00:00Z","fields":{"a":1,"b":2,"c":3,"d":4}}'
    codec = AvroCodec(settings.event_limits)
    (item,) = parse_json_lines([line], codec, settings.event_limits)
    assert isinstance(item, RejectedLine) and "over max_fields=3" in item.reason
