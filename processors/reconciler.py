"""A batch of events in, one outcome per event out: the one call the Kafka side makes.

Per batch: one ``sink.load`` of the distinct entities, the apply rules folded in order in memory
(so several versions of one entity in one batch cost one row write), and one ``sink.write`` of
the rows that changed. The sink's own version guard covers the window between load and write,
when another worker may have written the same entity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from processors.apply_rules import Outcome, StoredRow, apply
from processors.event import ReconEvent
from processors.sinks.base import Sink


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Reconciler:
    """Applies batches of validated events to a sink. Not thread-safe: one caller thread."""

    def __init__(self, sink: Sink, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.sink = sink
        self._clock_ms = clock_ms

    def reconcile(self, events: Sequence[ReconEvent]) -> list[Outcome]:
        """Outcomes in input order. Sink errors propagate unchanged; a sink error means
        nothing of this batch was written (``write`` is one transaction), so the caller may
        retry or re-route the whole batch."""
        if not events:
            return []
        entity_ids = list(dict.fromkeys(event.entity_id for event in events))
        current: dict[str, StoredRow | None] = dict(self.sink.load(entity_ids))
        changed: dict[str, StoredRow] = {}
        now_ms = self._clock_ms()
        outcomes: list[Outcome] = []
        for event in events:
            outcome, row = apply(current.get(event.entity_id), event, now_ms)
            if row is not None:
                current[event.entity_id] = row
                changed[event.entity_id] = row  # only the final row per entity is written
            outcomes.append(outcome)
        if changed:
            self.sink.write(list(changed.values()))
        return outcomes
