"""Fuzzing the untrusted edges: bytes into the Avro decoder, JSON into ``event_from_json`` and
``recon produce``'s line parser, and mixed batches through the whole apply path.

The property everywhere: zero crashes. Every input is either a valid event (applied or a
no-op) or classified with a reason (``DecodeError``/``InvalidEvent`` -> the DLT); nothing else
escapes. ``make test`` runs Hypothesis's default example count; ``make fuzz`` runs the
``fuzz`` profile (``HYPOTHESIS_PROFILE=fuzz``, registered in tests/conftest.py) for longer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from processors.codec import HEADER_LEN, MAGIC, AvroCodec
from processors.errors import DecodeError, InvalidEvent, ReconError
from processors.event import (
    EventLimits,
    Op,
    Priority,
    ReconEvent,
    event_from_json,
    event_to_json,
    validate,
)
from streams.failures.routing import ORIGINAL_OFFSET
from streams.publish import RejectedLine, parse_json_lines
from tests.processors.strategies import events
from tests.streams.inprocess import CapturingSender, in_process

CODEC = AvroCodec()
LIMITS = CODEC.limits
FINGERPRINTS = [schema.fingerprint for schema in CODEC.schemas.values()]
REASONS = {"undecodable", "invalid", "too_large"}

# No per-test example count: the profile decides (default in `make test`, `fuzz` for make fuzz).
fuzz_settings = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decode_or_classify(data: bytes) -> ReconEvent | ReconError:
    """The decoder's verdict; any exception other than the two classified ones fails the test."""
    try:
        decoded = CODEC.decode(data)
    except (DecodeError, InvalidEvent) as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc)
        event(f"classified: {exc.reason}")  # shown by --hypothesis-show-statistics
        return exc
    event("decoded")
    # Whatever decodes is a valid event, and survives a round trip unchanged.
    assert validate(decoded, LIMITS) is decoded
    assert CODEC.decode(CODEC.encode(decoded)) == decoded
    return decoded


# --- strategies ------------------------------------------------------------------------------

valid_encodings = st.builds(
    lambda event, schema: CODEC.encode_with(event, schema),
    events,
    st.sampled_from(sorted(CODEC.schemas)),
)

_INT64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # UTF-8-encodable
# Events that Avro can carry but validation may refuse: any text in ids and names (NUL,
# spaces, quotes, over-long), negative versions, years outside 1..9999, NaN, huge maps.
loose_events = st.builds(
    ReconEvent,
    event_id=_TEXT,
    entity_id=_TEXT | st.sampled_from(["", " ", "a'b", "x" * 300]),
    version=_INT64,
    op=st.sampled_from(Op),
    fields=st.dictionaries(
        _TEXT | st.just("n" * 200),
        st.none() | st.booleans() | _INT64 | st.floats() | _TEXT,
        max_size=8,
    ),
    priority=st.sampled_from(Priority),
    occurred_at_ms=_INT64,
    source=_TEXT,
)
loose_encodings = loose_events.map(lambda e: CODEC.encode_with(e, "current", check=False))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes] = valid_encodings) -> bytes:
    """A valid single-object encoding after 1-4 random edits: flips, overwrites, truncation,
    extension, insertion, deletion, duplication, or a splice with another valid encoding."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                ["flip", "set", "truncate", "extend", "insert", "delete", "dup", "splice"]
            )
        )
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        elif op == "splice":
            other = draw(valid_encodings)
            cut = draw(st.integers(0, len(other)))
            data = data[:at] + bytearray(other[cut:])
    return bytes(data)


# Garbage after a valid header reaches the Avro body parser itself.
headered_garbage = st.builds(
    lambda fp, body: MAGIC + fp + body, st.sampled_from(FINGERPRINTS), st.binary(max_size=256)
)
any_record = st.one_of(
    st.binary(max_size=300),
    headered_garbage,
    valid_encodings,
    loose_encodings,
    mutated(),
    mutated(loose_encodings),
    st.none(),
)


# --- the decoder -----------------------------------------------------------------------------


@fuzz_settings
@given(st.binary(max_size=1024))
def test_arbitrary_bytes_decode_or_are_classified(data: bytes) -> None:
    verdict = decode_or_classify(data)
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        assert isinstance(verdict, DecodeError)


@fuzz_settings
@given(headered_garbage)
def test_garbage_bodies_decode_or_are_classified(data: bytes) -> None:
    decode_or_classify(data)


@fuzz_settings
@given(mutated())
def test_mutated_encodings_decode_or_are_classified(data: bytes) -> None:
    decode_or_classify(data)


@fuzz_settings
@given(loose_encodings | mutated(loose_encodings))
def test_well_formed_but_invalid_events_are_classified(data: bytes) -> None:
    decode_or_classify(data)


@fuzz_settings
@given(mutated(), st.integers(64, 400))
def test_size_limit_holds_for_any_input(data: bytes, max_bytes: int) -> None:
    codec = AvroCodec(EventLimits(max_record_bytes=max_bytes))
    try:
        codec.decode(data)
    except (DecodeError, InvalidEvent) as exc:
        if len(data) > max_bytes:
            assert exc.reason == "too_large"
    else:
        assert len(data) <= max_bytes


# --- JSON: event_from_json and recon produce's line parser ------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = ["event_id", "entity_id", "version", "op", "fields", "priority", "occurred_at", "source"]


@st.composite
def near_valid_json(draw: st.DrawFn) -> Any:
    """The JSON form of a valid event with 1-3 edits: a key dropped, added or renamed, or a
    value replaced by arbitrary JSON (wrong type, out of range, nested ...)."""
    obj: dict[str, Any] = event_to_json(draw(events))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "add", "replace", "replace", "field", "rename"]))
        key = draw(st.sampled_from(_KEYS))
        if op == "drop":
            obj.pop(key, None)
        elif op == "add":
            obj[draw(st.text(max_size=10))] = draw(json_values)
        elif op == "replace":
            obj[key] = draw(json_values)
        elif op == "field" and isinstance(obj.get("fields"), dict):
            obj["fields"][draw(st.text(max_size=10))] = draw(json_values)
        elif op == "rename" and key in obj:
            obj[key.upper()] = obj.pop(key)
    if draw(st.integers(0, 9)) == 0:  # now and then not an object at all
        return draw(st.sampled_from([[obj], json.dumps(obj), None, 42]))
    return obj


@fuzz_settings
@given(near_valid_json())
def test_near_valid_json_is_an_event_or_invalid(obj: Any) -> None:
    try:
        event = event_from_json(obj, LIMITS)
    except InvalidEvent as exc:
        assert str(exc)
        return
    assert validate(event, LIMITS) is event
    CODEC.encode(event)  # a valid event always encodes


def _json_text(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


json_lines = st.one_of(
    near_valid_json().map(_json_text),
    # byte-level damage of a JSON line (an unterminated string, a stray brace, ...)
    mutated(near_valid_json().map(lambda o: _json_text(o).encode())).map(
        lambda b: b.decode("utf-8", "replace")
    ),
    st.text(max_size=200),
)


@fuzz_settings
@given(st.lists(json_lines, max_size=8))
def test_publisher_lines_are_published_or_rejected_with_a_line_number(lines: list[str]) -> None:
    lines = [line.replace("\n", " ").replace("\r", " ") for line in lines]
    out = list(parse_json_lines(lines, CODEC, LIMITS))
    for item in out:
        if isinstance(item, RejectedLine):
            assert 1 <= item.line_no <= len(lines) and item.reason
        else:
            key, value = item
            event = CODEC.decode(value)
            assert key == event.entity_id.encode()


# --- the whole apply path --------------------------------------------------------------------


@fuzz_settings
@given(st.lists(any_record, min_size=1, max_size=24))
def test_any_batch_is_applied_or_dead_lettered_with_a_reason(values: list[bytes | None]) -> None:
    verdicts = [decode_or_classify(value or b"") for value in values]
    run = in_process(CODEC)

    result = run.run(values)  # must not raise

    assert sum(result.counts.values()) == len(values)
    assert set(result.counts) <= {"applied", "duplicate", "stale", "dead_lettered"}
    dead = {int(dict(c.headers)[ORIGINAL_OFFSET]): c for c in run.sender.sent}
    assert len(dead) == len(run.sender.sent) == result.counts["dead_lettered"]
    for offset, verdict in enumerate(verdicts):
        if isinstance(verdict, ReconError):
            assert CapturingSender.reason(dead[offset]) == verdict.reason
        elif offset in dead:  # a valid event is only dead-lettered as a version conflict
            assert CapturingSender.reason(dead[offset]) == "conflict"
    assert all(copy.value == values[offset] for offset, copy in dead.items())
