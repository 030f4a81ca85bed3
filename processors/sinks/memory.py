"""An in-process sink: a dict with the same version guard as the real stores."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from processors.apply_rules import StoredRow
from processors.sinks.base import newest_per_entity


class MemorySink:
    """Rows live in a dict; lost when the process ends. For tests and dry runs."""

    def __init__(self) -> None:
        self._rows: dict[str, StoredRow] = {}
        self.writes = 0  # committed write() calls, for tests

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        rows = self._rows
        return {eid: rows[eid] for eid in entity_ids if eid in rows}

    def write(self, rows: Sequence[StoredRow]) -> None:
        current = self._rows
        # The guard, as the real stores enforce it: only a strictly higher version replaces.
        winners = [
            row
            for row in newest_per_entity(rows)
            if (stored := current.get(row.entity_id)) is None or row.version > stored.version
        ]
        current.update((row.entity_id, row) for row in winners)
        self.writes += 1

    def snapshot(self) -> dict[str, StoredRow]:
        return dict(self._rows)

    def close(self) -> None:
        pass
