"""The sink interface and the helpers every implementation shares.

A sink stores one row per entity (table ``entity_state``). Its ``write`` is the last line of
defence for the contract: the *store* only replaces a row with a strictly higher version, so two
workers racing on one entity (say, during a rebalance) can never move it backwards, whatever
either of them loaded earlier.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

from processors.apply_rules import StoredRow
from processors.event import Scalar

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Sink(Protocol):
    """Where entity rows live. Called from one thread at a time (the caller guarantees it)."""

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        """The stored rows for those ids; ids with no row are absent from the result."""
        ...

    def write(self, rows: Sequence[StoredRow]) -> None:
        """Write all rows in ONE transaction. A row replaces the stored one only if its version
        is greater (enforced by the store); otherwise it is silently kept as is.
        Raises DownstreamUnavailable / DownstreamTimeout when the store is unreachable or slow:
        then nothing of ``rows`` was written."""
        ...

    def snapshot(self) -> dict[str, StoredRow]:
        """The whole table, for verification and summaries."""
        ...

    def close(self) -> None: ...


def newest_per_entity(rows: Iterable[StoredRow]) -> list[StoredRow]:
    """One row per entity (the highest version), sorted by entity id.

    Sorting gives every writer the same lock order, so two concurrent transactions touching
    overlapping entities queue behind each other instead of deadlocking (PostgreSQL).
    """
    best: dict[str, StoredRow] = {}
    for row in rows:
        held = best.get(row.entity_id)
        if held is None or row.version > held.version:
            best[row.entity_id] = row
    return [best[k] for k in sorted(best)]


def fields_to_json(fields: Mapping[str, Scalar]) -> str:
    # ensure_ascii=False keeps hostile or non-Latin names verbatim and compact;
    # allow_nan=False because NaN/Infinity are not JSON (validation already forbids them).
    return json.dumps(dict(fields), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _int_or_float(text: str) -> int | float:
    # Validated integers fit in 64 bits; a bigger integer can only be a large float that a
    # numeric store (PostgreSQL JSONB) printed without an exponent, so give the float back.
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else float(value)


def fields_from_json(text: str) -> dict[str, Scalar]:
    loaded = json.loads(text, parse_int=_int_or_float)
    if not isinstance(loaded, dict):
        raise ValueError(f"stored fields are not a JSON object: {text[:80]!r}")
    return loaded


def ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def ms_to_iso(ms: int) -> str:
    """``2026-11-22T10:00:00.000Z``: sorts as text, parses back exactly."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_to_ms(text: str) -> int:
    return datetime_to_ms(datetime.fromisoformat(text))
