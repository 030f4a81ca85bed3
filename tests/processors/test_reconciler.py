from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.apply_rules import Outcome, StoredRow, fold
from processors.codec import AvroCodec
from processors.errors import DownstreamUnavailable
from processors.event import Op
from processors.reconciler import Reconciler
from processors.sinks.base import Sink
from processors.sinks.memory import MemorySink
from processors.sinks.sim import SimConditions, SimulatedSink
from processors.sinks.sqlite import SqliteSink
from processors.synthetic import SyntheticSpec, generate
from tests.processors.strategies import make_event

A, D, S, C = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE, Outcome.CONFLICT


class CountingSink:
    """Wraps a sink and records every call, to check the batch shape."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.loads: list[list[str]] = []
        self.writes: list[list[StoredRow]] = []

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        self.loads.append(list(entity_ids))
        return self.inner.load(entity_ids)

    def write(self, rows: Sequence[StoredRow]) -> None:
        self.writes.append(list(rows))
        self.inner.write(rows)

    def snapshot(self) -> dict[str, StoredRow]:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(params=["memory", "sqlite"])
def inner_sink(request: pytest.FixtureRequest, tmp_path: object) -> Sink:
    if request.param == "memory":
        return MemorySink()
    return SqliteSink(f"{tmp_path}/r.db")


def test_batch_with_several_versions_of_one_entity(inner_sink: Sink) -> None:
    sink = CountingSink(inner_sink)
    reconciler = Reconciler(sink, clock_ms=lambda: 42)
    batch = [
        make_event("a", 1),
        make_event("b", 1),
        make_event("a", 3),
        make_event("a", 2),  # stale: 3 came first in this batch
        make_event("a", 3),  # duplicate of the one in this batch
        make_event("a", 3, event_id="other"),  # conflict
        make_event("a", 4, op=Op.DELETE),
    ]
    assert reconciler.reconcile(batch) == [A, A, A, S, D, C, A]
    assert sink.loads == [["a", "b"]]
    assert len(sink.writes) == 1
    assert sorted((r.entity_id, r.version) for r in sink.writes[0]) == [("a", 4), ("b", 1)]
    assert sink.snapshot() == {
        "a": StoredRow("a", 4, True, {}, "a:v4", 42),
        "b": StoredRow("b", 1, False, {"seq": 1}, "b:v1", 42),
    }
    # The next batch starts from the stored rows.
    assert reconciler.reconcile([make_event("a", 4, op=Op.DELETE), make_event("b", 1)]) == [D, D]
    assert len(sink.writes) == 1  # nothing changed: no write


def test_empty_batch_touches_nothing() -> None:
    sink = CountingSink(MemorySink())
    assert Reconciler(sink).reconcile([]) == []
    assert sink.loads == [] and sink.writes == []


def test_transient_failure_writes_nothing(tmp_path: object) -> None:
    sim = SimulatedSink(f"{tmp_path}/s.db", SimConditions(error_rate=1.0))
    reconciler = Reconciler(sim)
    with pytest.raises(DownstreamUnavailable):
        reconciler.reconcile([make_event("a", 1), make_event("b", 1), make_event("a", 2)])
    assert sim.snapshot() == {}
    # Retried once the downstream is back: everything applies, as if the first try never was.
    sim.initial = SimConditions()
    sim._conditions = sim.initial
    outcomes = reconciler.reconcile([make_event("a", 1), make_event("b", 1), make_event("a", 2)])
    assert outcomes == [A, A, A]


def test_stored_rows_are_the_starting_point(inner_sink: Sink) -> None:
    inner_sink.write([StoredRow("a", 5, False, {}, "a:v5", 0)])
    outcomes = Reconciler(inner_sink).reconcile(
        [make_event("a", 4), make_event("a", 5), make_event("a", 5, event_id="x")]
    )
    assert outcomes == [S, D, C]


CODEC = AvroCodec()


@given(
    seed=st.integers(0, 2**16),
    batch_size=st.integers(1, 60),
)
@settings(max_examples=25, deadline=None)
def test_batches_equal_the_sequential_reference(seed: int, batch_size: int) -> None:
    spec = SyntheticSpec(300, entities=20, duplicate_rate=0.2, reorder_rate=0.2, seed=seed)
    events = [r.event for r in generate(spec, CODEC) if r.event is not None]
    sink = MemorySink()
    reconciler = Reconciler(sink, clock_ms=lambda: 0)
    outcomes: list[Outcome] = []
    for start in range(0, len(events), batch_size):
        outcomes += reconciler.reconcile(events[start : start + batch_size])
    expected_rows, expected_counts = fold(events)
    assert sink.snapshot() == expected_rows
    assert {o: outcomes.count(o) for o in set(outcomes)} == dict(expected_counts)
