"""The reconciliation event: its value type, its limits, and its JSON form.

Every event that reaches the apply rules has passed :func:`validate`, whether it came from Avro
bytes (the codec validates after decoding) or from JSON (``recon produce``). Validation errors
name the field and the limit so a dead-lettered record explains itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

from processors.errors import InvalidEvent

Scalar = None | bool | int | float | str
"""A field value: the flat scalar union of the Avro schema."""


class Op(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


class Priority(StrEnum):
    CRITICAL = "critical"
    NORMAL = "normal"
    BULK = "bulk"


@dataclass(frozen=True, slots=True)
class ReconEvent:
    event_id: str
    entity_id: str
    version: int
    op: Op
    fields: Mapping[str, Scalar]
    priority: Priority
    occurred_at_ms: int
    source: str


@dataclass(frozen=True, slots=True)
class EventLimits:
    """Bounds on one event; they keep a hostile producer from exhausting memory or the store."""

    max_record_bytes: int = 1_048_576
    max_fields: int = 256
    max_field_name_len: int = 128
    max_string_len: int = 8192
    max_id_len: int = 256


ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")
MAX_VERSION = 2**63 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_E = TypeVar("_E", bound=StrEnum)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# occurred_at must be printable as an ISO-8601 date (years 1..9999), so the JSON form round-trips.
MIN_OCCURRED_AT_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
MAX_OCCURRED_AT_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1
)


def _check_id(name: str, value: object, limits: EventLimits) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(f"{name} must not be empty")
    if len(value) > limits.max_id_len:
        raise InvalidEvent(f"{name} is {len(value)} chars, over max_id_len={limits.max_id_len}")
    if ID_PATTERN.match(value) is None:
        raise InvalidEvent(f"{name} {value[:64]!r} has characters outside [A-Za-z0-9._:@/+=-]")


def _check_text(what: str, value: str, max_len: int, limit_name: str) -> None:
    if len(value) > max_len:
        raise InvalidEvent(f"{what} is {len(value)} chars, over {limit_name}={max_len}")
    # NUL and lone surrogates cannot be stored as PostgreSQL text/JSONB nor encoded as UTF-8.
    if "\x00" in value:
        raise InvalidEvent(f"{what} contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(f"{what} is not valid Unicode (lone surrogate)") from None


def _check_fields(fields: object, limits: EventLimits) -> None:
    if not isinstance(fields, Mapping):
        raise InvalidEvent(f"fields must be a map, got {type(fields).__name__}")
    if len(fields) > limits.max_fields:
        raise InvalidEvent(f"fields has {len(fields)} entries, over max_fields={limits.max_fields}")
    for name, value in fields.items():
        if not isinstance(name, str):
            raise InvalidEvent(f"field name {name!r} must be a string")
        if not name:
            raise InvalidEvent("field name must not be empty")
        _check_text(
            f"field name {name[:64]!r}", name, limits.max_field_name_len, "max_field_name_len"
        )
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise InvalidEvent(f"field {name[:64]!r}: integer out of the 64-bit range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidEvent(f"field {name[:64]!r}: {value} is not a finite number")
        elif isinstance(value, str):
            _check_text(f"field {name[:64]!r}", value, limits.max_string_len, "max_string_len")
        else:
            raise InvalidEvent(
                f"field {name[:64]!r}: {type(value).__name__} is not a scalar "
                "(null, boolean, integer, number or string)"
            )


def validate(event: ReconEvent, limits: EventLimits) -> ReconEvent:
    """Return ``event`` unchanged if it obeys every rule, else raise :class:`InvalidEvent`."""
    _check_id("event_id", event.event_id, limits)
    _check_id("entity_id", event.entity_id, limits)
    version = event.version
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEvent(f"version must be an integer, got {type(version).__name__}")
    if not 0 <= version <= MAX_VERSION:
        raise InvalidEvent(f"version {version} is outside 0 <= version < 2**63")
    if not isinstance(event.op, Op):
        raise InvalidEvent(f"op {event.op!r} is not one of {[o.value for o in Op]}")
    if not isinstance(event.priority, Priority):
        raise InvalidEvent(
            f"priority {event.priority!r} is not one of {[p.value for p in Priority]}"
        )
    ts = event.occurred_at_ms
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise InvalidEvent(f"occurred_at must be epoch milliseconds, got {type(ts).__name__}")
    if not MIN_OCCURRED_AT_MS <= ts <= MAX_OCCURRED_AT_MS:
        raise InvalidEvent(f"occurred_at {ts} ms is outside years 1..9999")
    if not isinstance(event.source, str) or not event.source:
        raise InvalidEvent("source must be a non-empty string")
    _check_text("source", event.source, limits.max_id_len, "max_id_len")
    _check_fields(event.fields, limits)
    return event


# --- JSON form -------------------------------------------------------------------------------

_REQUIRED = ("event_id", "entity_id", "version", "op", "occurred_at")
_KNOWN = frozenset((*_REQUIRED, "fields", "priority", "source"))


def parse_occurred_at(value: object) -> int:
    """Epoch millis from an ISO-8601 string with ``Z`` or an offset, or from an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise InvalidEvent(
            f"occurred_at must be an ISO-8601 string or epoch millis, got {type(value).__name__}"
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"occurred_at {value[:64]!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"occurred_at {value[:64]!r} needs a timezone (Z or +hh:mm)")
    try:
        return (parsed - _EPOCH) // timedelta(milliseconds=1)
    except OverflowError:
        raise InvalidEvent(f"occurred_at {value[:64]!r} is out of range") from None


def format_occurred_at(ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, e.g. ``2026-11-22T10:00:00.000Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _enum_value(enum: type[_E], name: str, value: object) -> _E:
    if isinstance(value, str):
        try:
            return enum(value)
        except ValueError:
            pass
    raise InvalidEvent(f"{name} {value!r} is not one of {[m.value for m in enum]}")


def event_from_json(obj: object, limits: EventLimits) -> ReconEvent:
    """Build and validate an event from its JSON form (a parsed object); every problem is an
    :class:`InvalidEvent`."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(str(k)[:64] for k in obj if k not in _KNOWN)
    if unknown:
        raise InvalidEvent(f"unknown keys {unknown}; accepted: {sorted(_KNOWN)}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise InvalidEvent(f"missing required keys {missing}")
    fields = obj.get("fields", {})
    if fields is None:
        fields = {}
    if not isinstance(fields, dict):
        raise InvalidEvent(f"fields must be an object, got {type(fields).__name__}")
    event = ReconEvent(
        event_id=obj["event_id"],
        entity_id=obj["entity_id"],
        version=obj["version"],
        op=_enum_value(Op, "op", obj["op"]),
        fields=dict(fields),
        priority=_enum_value(Priority, "priority", obj.get("priority", Priority.NORMAL.value)),
        occurred_at_ms=parse_occurred_at(obj["occurred_at"]),
        source=obj.get("source", "unknown"),
    )
    return validate(event, limits)


def event_to_json(event: ReconEvent) -> dict[str, object]:
    """The JSON form accepted by :func:`event_from_json` (``occurred_at`` as ISO-8601 UTC)."""
    return {
        "event_id": event.event_id,
        "entity_id": event.entity_id,
        "version": event.version,
        "op": event.op.value,
        "fields": dict(event.fields),
        "priority": event.priority.value,
        "occurred_at": format_occurred_at(event.occurred_at_ms),
        "source": event.source,
    }
