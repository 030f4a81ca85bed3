"""The idempotent apply rules of the contract, as pure functions (no I/O, no clock).

An event applies only if its version is greater than the stored one. Everything else is a
no-op with a name: the same event again is a *duplicate*, an older version is *stale*, and the
same version with another event id is a *conflict* (a permanent failure, dead-lettered by the
caller). Because only "greater version wins" ever changes a row, any mix of duplicates,
reordering and replays converges to each entity's highest-version event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from processors.event import Op, ReconEvent, Scalar


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of ``entity_state``: an entity's latest applied event (or its tombstone)."""

    entity_id: str
    version: int
    deleted: bool
    fields: Mapping[str, Scalar]
    last_event_id: str
    updated_at_ms: int

    def same_state(self, other: StoredRow) -> bool:
        """Equal in everything but ``updated_at_ms`` (when it was written is not state)."""
        return (
            self.entity_id == other.entity_id
            and self.version == other.version
            and self.deleted == other.deleted
            and dict(self.fields) == dict(other.fields)
            and self.last_event_id == other.last_event_id
        )


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"


def decide(stored: StoredRow | None, event: ReconEvent) -> Outcome:
    """What applying ``event`` on top of ``stored`` means, per the contract."""
    if stored is None or event.version > stored.version:
        return Outcome.APPLIED
    if event.version < stored.version:
        return Outcome.STALE
    if event.event_id == stored.last_event_id:
        return Outcome.DUPLICATE
    return Outcome.CONFLICT


def row_for(event: ReconEvent, now_ms: int) -> StoredRow:
    """The row an applied event leaves: upsert replaces fields wholesale; delete is a tombstone
    that keeps the version (so an older upsert arriving later stays stale)."""
    deleted = event.op is Op.DELETE
    return StoredRow(
        entity_id=event.entity_id,
        version=event.version,
        deleted=deleted,
        fields={} if deleted else dict(event.fields),
        last_event_id=event.event_id,
        updated_at_ms=now_ms,
    )


def apply(
    stored: StoredRow | None, event: ReconEvent, now_ms: int
) -> tuple[Outcome, StoredRow | None]:
    """``(outcome, new_row)``; ``new_row`` is None unless the outcome is APPLIED."""
    outcome = decide(stored, event)
    if outcome is Outcome.APPLIED:
        return outcome, row_for(event, now_ms)
    return outcome, None


def fold(
    events: Iterable[ReconEvent], now_ms: int = 0
) -> tuple[dict[str, StoredRow], Counter[Outcome]]:
    """The reference model: apply ``events`` one by one, in the given order, to an empty store."""
    rows: dict[str, StoredRow] = {}
    counts: Counter[Outcome] = Counter()
    for event in events:
        outcome, row = apply(rows.get(event.entity_id), event, now_ms)
        counts[outcome] += 1
        if row is not None:
            rows[event.entity_id] = row
    return rows, counts
