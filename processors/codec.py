"""Avro single-object encoding of reconciliation events.

Wire format (Avro spec, "Single object encoding"): ``C3 01``, then the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the Avro binary body.
The fingerprint lets a reader pick the exact writer schema among every version in ``schemas/``
and resolve it to the current one, so producers can upgrade before or after consumers.

:meth:`AvroCodec.decode` is on the hot path and is fed untrusted bytes: it only ever raises
:class:`DecodeError` (the bytes are unreadable) or :class:`InvalidEvent` (readable but invalid).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from processors.errors import DecodeError, InvalidEvent
from processors.event import EventLimits, Op, Priority, ReconEvent, validate

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_STEM = "reconciliation_event"
CURRENT = "current"
MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One schema file, parsed once: ``name`` is ``current`` or the file's version tag."""

    name: str
    path: Path
    fingerprint: bytes
    parsed: Any  # fastavro's parsed schema (a dict it annotates); opaque to us


def _strip_logical_types(node: Any) -> Any:
    # We read/write occurred_at as plain epoch millis: exact, and no datetime conversion on the
    # hot path. logicalType is not part of the canonical form, so fingerprints are unchanged.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def schema_fingerprint(schema_json: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 little-endian bytes on the wire."""
    canonical = to_parsing_canonical_form(dict(schema_json))
    # fastavro renders this fingerprint as the hex of its little-endian bytes.
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def load_schemas(directory: Path = SCHEMA_DIR) -> dict[str, SchemaVersion]:
    """Every ``reconciliation_event[.<tag>].avsc`` in ``directory``, keyed by ``current``/tag."""
    versions: dict[str, SchemaVersion] = {}
    for path in sorted(directory.glob(f"{SCHEMA_STEM}*.avsc")):
        tag = path.name.removeprefix(SCHEMA_STEM).removesuffix(".avsc").lstrip(".")
        raw = json.loads(path.read_text(encoding="utf-8"))
        versions[tag or CURRENT] = SchemaVersion(
            name=tag or CURRENT,
            path=path,
            fingerprint=schema_fingerprint(raw),
            parsed=parse_schema(_strip_logical_types(raw)),
        )
    if CURRENT not in versions:
        raise RuntimeError(f"no {SCHEMA_STEM}.avsc in {directory}")
    return versions


def _to_record(event: ReconEvent) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "entity_id": event.entity_id,
        "version": event.version,
        "op": str(event.op),
        "fields": dict(event.fields),
        "priority": str(event.priority),
        "occurred_at": event.occurred_at_ms,
        "source": event.source,
    }


_OPS = {o.value: o for o in Op}
_PRIORITIES = {p.value: p for p in Priority}


class AvroCodec:
    """Encode/decode events; schemas are parsed once at construction."""

    def __init__(self, limits: EventLimits | None = None, schema_dir: Path = SCHEMA_DIR) -> None:
        self.limits = limits or EventLimits()
        self.schemas = load_schemas(schema_dir)
        self.current = self.schemas[CURRENT]
        self._by_fingerprint = {s.fingerprint: s for s in self.schemas.values()}
        if len(self._by_fingerprint) != len(self.schemas):
            raise RuntimeError(f"two schema files in {schema_dir} have the same canonical form")

    # --- encoding ------------------------------------------------------------------------------

    def encode(self, event: ReconEvent) -> bytes:
        """Validate, then encode with the current schema."""
        return self.encode_with(event, CURRENT)

    def encode_with(
        self, event: ReconEvent, schema_name: str = "v1", *, check: bool = True
    ) -> bytes:
        """Encode with a named schema (``current``, ``v1``, ...). ``check=False`` skips
        validation, to craft invalid-but-encodable records for tests and poison load."""
        schema = self.schemas.get(schema_name)
        if schema is None:
            raise ValueError(f"unknown schema {schema_name!r}; have {sorted(self.schemas)}")
        if check:
            validate(event, self.limits)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        try:
            schemaless_writer(buf, schema.parsed, _to_record(event))
        except Exception as exc:  # fastavro raises ValueError/TypeError/OverflowError/...
            raise InvalidEvent(f"not encodable as Avro: {exc}") from exc
        data = buf.getvalue()
        if check and len(data) > self.limits.max_record_bytes:
            raise InvalidEvent(
                f"encoded event is {len(data)} bytes, over "
                f"max_record_bytes={self.limits.max_record_bytes}",
                reason="too_large",
            )
        return data

    # --- decoding ------------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview | None) -> ReconEvent:
        """Bytes -> validated event. Raises only DecodeError or InvalidEvent."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        # Size first: never hand an oversized (possibly hostile) buffer to the parser.
        if size > self.limits.max_record_bytes:
            raise DecodeError(
                f"record is {size} bytes, over max_record_bytes={self.limits.max_record_bytes}",
                reason="too_large",
            )
        if size < HEADER_LEN:
            raise DecodeError(f"record is {size} bytes, shorter than the {HEADER_LEN}-byte header")
        raw = bytes(data)
        if raw[:2] != MAGIC:
            raise DecodeError(f"bad magic {raw[:2].hex()} (expected c301, Avro single-object)")
        writer = self._by_fingerprint.get(raw[2:HEADER_LEN])
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {raw[2:HEADER_LEN].hex()}")
        buf = io.BytesIO(raw)
        buf.seek(HEADER_LEN)
        # Same schema: skip resolution (the common case, and measurably faster).
        reader = None if writer is self.current else self.current.parsed
        try:
            record: Any = schemaless_reader(buf, writer.parsed, reader)
        except Exception as exc:  # EOFError, UnicodeDecodeError, MemoryError, IndexError, ...
            raise DecodeError(f"Avro body unreadable ({type(exc).__name__}: {exc})") from None
        if buf.tell() != size:
            raise DecodeError(f"{size - buf.tell()} trailing bytes after the Avro body")
        try:
            event = ReconEvent(
                event_id=record["event_id"],
                entity_id=record["entity_id"],
                version=record["version"],
                op=_OPS[record["op"]],
                fields=record["fields"],
                priority=_PRIORITIES[record["priority"]],
                occurred_at_ms=record["occurred_at"],
                source=record["source"],
            )
        except Exception as exc:  # schema resolution guarantees the shape; belt and braces
            raise DecodeError(f"decoded record has an unexpected shape: {exc!r}") from None
        return validate(event, self.limits)
