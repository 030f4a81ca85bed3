from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.codec import HEADER_LEN, MAGIC, AvroCodec, load_schemas
from processors.errors import DecodeError, InvalidEvent
from processors.event import EventLimits, ReconEvent
from tests.processors.strategies import events, make_event

CODEC = AvroCodec()
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO written straight from the Avro specification, to check fastavro's."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_schema_files_declare_the_contract() -> None:
    current = json.loads((SCHEMAS / "reconciliation_event.avsc").read_text())
    v1 = json.loads((SCHEMAS / "reconciliation_event.v1.avsc").read_text())
    assert (current["namespace"], current["name"]) == ("recon", "ReconciliationEvent")
    names = [f["name"] for f in current["fields"]]
    assert names == [
        "event_id", "entity_id", "version", "op", "fields", "priority", "occurred_at", "source",
    ]  # fmt: skip
    assert [f["name"] for f in v1["fields"]] == names[:-1]
    assert current["fields"][-1]["default"] == "unknown"


def test_fingerprint_is_crc64_avro_little_endian() -> None:
    from fastavro.schema import to_parsing_canonical_form

    for version in load_schemas().values():
        raw = json.loads(version.path.read_text())
        canonical = to_parsing_canonical_form(raw).encode()
        assert version.fingerprint == crc64_avro(canonical).to_bytes(8, "little")
    # The specification's own test vector: the schema "null".
    assert crc64_avro(b'"null"') == 7195948357588979594


def test_wire_layout() -> None:
    data = CODEC.encode(make_event())
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_LEN] == CODEC.current.fingerprint


def test_round_trip_contract_example() -> None:
    event = make_event(fields={"balance": 120.5, "status": "open", "n": 3, "ok": True, "z": None})
    assert CODEC.decode(CODEC.encode(event)) == event


@given(events)
@settings(max_examples=200)
def test_round_trip(event: ReconEvent) -> None:
    assert CODEC.decode(CODEC.encode(event)) == event


def test_bool_and_int_keep_their_types() -> None:
    decoded = CODEC.decode(CODEC.encode(make_event(fields={"t": True, "one": 1, "f": 1.0})))
    assert type(decoded.fields["t"]) is bool
    assert type(decoded.fields["one"]) is int
    assert type(decoded.fields["f"]) is float


def test_v1_records_decode_with_default_source() -> None:
    event = make_event(source="billing")
    data = CODEC.encode_with(event, "v1")
    assert data[2:HEADER_LEN] == CODEC.schemas["v1"].fingerprint != CODEC.current.fingerprint
    assert CODEC.decode(data) == replace(event, source="unknown")


def test_accepts_bytearray_and_memoryview() -> None:
    data = CODEC.encode(make_event())
    assert CODEC.decode(bytearray(data)) == CODEC.decode(memoryview(data)) == make_event()


def test_unknown_schema_name() -> None:
    with pytest.raises(ValueError, match="unknown schema 'v9'"):
        CODEC.encode_with(make_event(), "v9")


def test_encode_validates_unless_told_not_to() -> None:
    bad = make_event(entity_id="has space", event_id="e-1")
    with pytest.raises(InvalidEvent, match="entity_id"):
        CODEC.encode(bad)
    data = CODEC.encode_with(bad, "current", check=False)
    with pytest.raises(InvalidEvent, match="entity_id"):
        CODEC.decode(data)


def test_encode_unencodable_is_invalid_event() -> None:
    with pytest.raises(InvalidEvent, match="not encodable"):
        CODEC.encode_with(make_event(fields={"x": [1]}), "current", check=False)  # type: ignore[dict-item]


def test_encode_too_large() -> None:
    codec = AvroCodec(EventLimits(max_record_bytes=200))
    with pytest.raises(InvalidEvent) as caught:
        codec.encode(make_event(fields={"s": "x" * 300}))
    assert caught.value.reason == "too_large"


GOOD = CODEC.encode(make_event(fields={"a": "text", "b": 2}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "expected bytes, got NoneType"),
        ("text", "expected bytes, got str"),
        (b"", "shorter than the 10-byte header"),
        (GOOD[:9], "shorter than the 10-byte header"),
        (b"\x00\x01" + GOOD[2:], "bad magic"),
        (b"{" + GOOD[1:], "bad magic"),
        (MAGIC + b"\x00" * 8 + GOOD[HEADER_LEN:], "unknown writer schema fingerprint"),
        (GOOD[:-1], "unreadable"),
        (GOOD[: HEADER_LEN + 3], "unreadable"),
        (GOOD + b"\x00", "1 trailing bytes"),
        (GOOD[:HEADER_LEN] + b"\xff" * 30, "unreadable"),
        (GOOD[:HEADER_LEN] + b"\x01" * 30, "unreadable"),
    ],
)
def test_bad_bytes_are_decode_errors(data: object, message: str) -> None:
    with pytest.raises(DecodeError, match=message) as caught:
        CODEC.decode(data)  # type: ignore[arg-type]
    assert caught.value.reason == "undecodable"


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


@pytest.mark.parametrize("length", [2**62, 2**40, -5, -(2**62)])
def test_hostile_length_prefixes_do_not_allocate(length: int) -> None:
    # A garbage length must fail fast instead of reserving gigabytes.
    data = GOOD[:HEADER_LEN] + _zigzag(length) + b"abc"
    with pytest.raises(DecodeError):
        CODEC.decode(data)
    # Same, deep inside the fields map.
    head = GOOD[:HEADER_LEN] + _zigzag(1) + b"e" + _zigzag(1) + b"x" + _zigzag(1) + _zigzag(0)
    with pytest.raises(DecodeError):
        CODEC.decode(head + _zigzag(length) + _zigzag(length) + b"k")


def test_oversize_is_rejected_before_parsing() -> None:
    codec = AvroCodec(EventLimits(max_record_bytes=64))
    data = CODEC.encode(make_event(fields={"s": "x" * 100}))
    with pytest.raises(DecodeError, match="over max_record_bytes=64") as caught:
        codec.decode(data)
    assert caught.value.reason == "too_large"
    # Even garbage is "too large", not "undecodable": size is checked first.
    with pytest.raises(DecodeError) as caught:
        codec.decode(b"\x00" * 65)
    assert caught.value.reason == "too_large"


def test_decoded_but_invalid_is_invalid_event() -> None:
    data = CODEC.encode_with(make_event(version=-1), "current", check=False)
    with pytest.raises(InvalidEvent, match="outside 0 <= version"):
        CODEC.decode(data)


@given(st.binary(max_size=200))
@settings(max_examples=200)
def test_arbitrary_bytes_only_raise_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError, InvalidEvent):  # anything else fails the test
        CODEC.decode(data)


@given(
    prefix=st.sampled_from([GOOD[:HEADER_LEN], CODEC.encode_with(make_event(), "v1")[:HEADER_LEN]]),
    body=st.binary(max_size=200),
)
@settings(max_examples=200)
def test_arbitrary_bodies_behind_a_valid_header(prefix: bytes, body: bytes) -> None:
    with contextlib.suppress(DecodeError, InvalidEvent):  # anything else fails the test
        CODEC.decode(prefix + body)


@given(data=st.data(), event=events)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_corrupted_records_only_raise_decode_or_invalid(
    data: st.DataObject, event: ReconEvent
) -> None:
    raw = bytearray(CODEC.encode(event))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(HEADER_LEN, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    try:
        decoded = CODEC.decode(bytes(raw))
    except (DecodeError, InvalidEvent):
        return
    assert isinstance(decoded, ReconEvent)
