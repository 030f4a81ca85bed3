"""Checking a sink against the events that were published.

The rule the whole system promises (CONTRACT): after any mix of duplicates, reordering,
retries, crashes and replays, each entity's row equals its highest-version valid event.
This check depends on nothing but that rule -- not on the order records were applied in --
so it holds for runs with retries, where a delayed copy changes which records were "stale".

The one ambiguity is a conflict at the top version (two events, same entity and version,
different ids): whichever arrived first wins and the other is dead-lettered, and a retry can
change which one arrives first. Either is then accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from processors.apply_rules import StoredRow, row_for
from processors.event import ReconEvent


@dataclass(frozen=True, slots=True)
class Mismatch:
    entity_id: str
    problem: str


class ExpectedState:
    """The top-version candidates per entity, accumulated from published events."""

    def __init__(self) -> None:
        self._top: dict[str, tuple[int, list[ReconEvent]]] = {}

    def observe(self, event: ReconEvent) -> None:
        current = self._top.get(event.entity_id)
        if current is None or event.version > current[0]:
            self._top[event.entity_id] = (event.version, [event])
        elif event.version == current[0] and all(e.event_id != event.event_id for e in current[1]):
            current[1].append(event)

    def observe_all(self, events: Iterable[ReconEvent]) -> ExpectedState:
        for event in events:
            self.observe(event)
        return self

    @property
    def entities(self) -> int:
        return len(self._top)

    def verify(self, rows: Mapping[str, StoredRow]) -> list[Mismatch]:
        """Every difference between ``rows`` and the expected state (empty when exact)."""
        problems: list[Mismatch] = []
        for entity_id, (version, candidates) in self._top.items():
            row = rows.get(entity_id)
            if row is None:
                problems.append(Mismatch(entity_id, f"missing (expected version {version})"))
                continue
            if not any(row.same_state(row_for(event, row.updated_at_ms)) for event in candidates):
                ids = ", ".join(e.event_id for e in candidates)
                problems.append(
                    Mismatch(
                        entity_id,
                        f"row is version {row.version} event {row.last_event_id!r} "
                        f"deleted={row.deleted}; expected version {version} from {ids}",
                    )
                )
        for entity_id in rows.keys() - self._top.keys():
            problems.append(Mismatch(entity_id, "row for an entity no valid event named"))
        return problems
