"""The fast path's bulk delivery (streams/kafka/fast_consumer.py), without a broker.

A ``BulkConsumer`` is built without Faust's start-up and given just the state its drain loop
reads (Faust's ack bookkeeping, read offsets, flow flag, assignment); ``seek`` is recorded.
What is checked: chunks of ``batch_max`` in offset order, offsets acked only after the handler
returned and never when it raised, re-fetched records skipped, a pause mid-fetch rewinds the
partition to its first undelivered record, holes in offsets become gaps.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from streams.failures.routing import SourceRecord
from streams.kafka.fast_consumer import BulkConsumer

TOPIC = "in.events"


class TP(tuple[str, int]):
    @property
    def topic(self) -> str:
        return self[0]

    @property
    def partition(self) -> int:
        return self[1]


P0, P1 = TP((TOPIC, 0)), TP((TOPIC, 1))


def record(tp: TP, offset: int) -> Any:
    return SimpleNamespace(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_000 + offset,
        key=b"k",
        value=b"v%d" % offset,
        headers=[("h", b"1")],
    )


class Harness:
    def __init__(self, batch_max: int = 3) -> None:
        self.batches: list[list[tuple[int, int]]] = []
        self.fail_on: int | None = None
        self.seeks: list[tuple[TP, int]] = []
        self.gaps: list[tuple[TP, int, int]] = []
        self.on_batch: Any = None
        self.suspend = False
        consumer = BulkConsumer.__new__(BulkConsumer)
        app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=None,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            _recon_bulk={TOPIC: (self.handler, batch_max)},
        )
        state: dict[str, Any] = {
            "app": app,
            "flow_active": True,
            "_stopped": asyncio.Event(),
            "_crashed": asyncio.Event(),
            "_buffered_partitions": set(),
            "_paused_partitions": set(),
            "_read_offset": defaultdict(lambda: None),
            "_committed_offset": defaultdict(lambda: None),
            "_acked": defaultdict(list),
            "_acked_index": defaultdict(set),
            "_n_acked": 0,
            "_commit_every": None,
            "_waiting_for_ack": None,
            "_bulk_idle": asyncio.Event(),
            "_bulk_in_flight": 0,
            "assignment": lambda: {P0, P1},
            "seek": self.seek,
            "_add_gap": self.add_gap,
        }
        for name, value in state.items():
            object.__setattr__(consumer, name, value)
        self.consumer = consumer
        self.app = app

    async def handler(self, records: Sequence[SourceRecord]) -> None:
        self.batches.append([(r.partition, r.offset) for r in records])
        if self.on_batch is not None:
            self.on_batch(len(self.batches))
        if self.fail_on == len(self.batches):
            raise RuntimeError("sink exploded")
        if self.suspend:
            await asyncio.sleep(0)  # let the other partitions run meanwhile

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.consumer._read_offset[tp] = offset or None

    async def add_gap(self, tp: TP, begin: int, end: int) -> None:
        self.gaps.append((tp, begin, end))

    def acked(self, tp: TP) -> list[int]:
        return sorted(self.consumer._acked[tp])

    def deliver(self, records: dict[TP, list[Any]], active: set[TP] | None = None) -> None:
        asyncio.run(self.consumer._deliver(records, active if active is not None else {P0, P1}))


def test_chunks_of_batch_max_acked_after_the_handler() -> None:
    h = Harness(batch_max=3)
    h.deliver({P0: [record(P0, o) for o in range(7)], P1: [record(P1, o) for o in range(2)]})
    assert h.batches == [
        [(0, 0), (0, 1), (0, 2)],
        [(0, 3), (0, 4), (0, 5)],
        [(0, 6)],
        [(1, 0), (1, 1)],
    ]
    assert h.acked(P0) == list(range(7)) and h.acked(P1) == [0, 1]
    assert h.consumer._n_acked == 9
    assert h.consumer._read_offset[P0] == 6
    assert h.seeks == [] and h.gaps == []


def test_a_failing_handler_acks_nothing_of_its_chunk() -> None:
    h = Harness(batch_max=3)
    h.fail_on = 2
    with pytest.raises(RuntimeError):
        h.deliver({P0: [record(P0, o) for o in range(7)]})
    assert h.acked(P0) == [0, 1, 2]  # the first chunk only
    assert h.consumer._read_offset[P0] == 2


def test_refetched_records_are_skipped_and_holes_become_gaps() -> None:
    h = Harness(batch_max=10)
    h.consumer._read_offset[P0] = 4  # offsets up to 4 were delivered already
    h.deliver({P0: [record(P0, o) for o in (2, 3, 4, 5, 9, 10)]})
    assert h.batches == [[(0, 4), (0, 5), (0, 9), (0, 10)]]
    assert h.gaps == [(P0, 6, 9)]  # 6..8 are not in the log (e.g. transaction markers)
    assert h.acked(P0) == [4, 5, 9, 10]


def test_a_pause_mid_fetch_rewinds_to_the_first_undelivered_record() -> None:
    h = Harness(batch_max=2)
    active = {P0, P1}
    h.on_batch = lambda n: active.discard(P0) if n == 1 else None  # paused after chunk 1
    h.deliver(
        {P0: [record(P0, o) for o in range(5)], P1: [record(P1, o) for o in range(2)]}, active
    )
    assert h.batches == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]  # P1 still delivered
    assert h.seeks == [(P0, 2)]  # offsets 2..4 are fetched again on resume
    assert h.acked(P0) == [0, 1]


def test_a_stopped_flow_delivers_nothing_more() -> None:
    h = Harness(batch_max=2)

    def stop_flow(n: int) -> None:
        if n == 1:
            h.consumer.flow_active = False

    h.on_batch = stop_flow
    h.deliver({P0: [record(P0, o) for o in range(4)], P1: [record(P1, o) for o in range(3)]})
    assert h.batches == [[(0, 0), (0, 1)]]
    assert h.seeks == [(P0, 2), (P1, 0)]
    assert h.acked(P0) == [0, 1] and h.acked(P1) == []


def test_a_partition_revoked_while_applying_is_not_acked() -> None:
    h = Harness(batch_max=5)
    object.__setattr__(h.consumer, "assignment", lambda: {P1})
    h.deliver({P0: [record(P0, o) for o in range(3)]})
    assert h.batches == [[(0, 0), (0, 1), (0, 2)]]
    assert h.acked(P0) == []


def test_partitions_run_side_by_side_in_order_and_a_failure_stops_them_after_their_chunk() -> None:
    h = Harness(batch_max=2)
    h.suspend = True
    h.fail_on = 3  # P0's second chunk (P0 chunk 1, P1 chunk 1, P0 chunk 2, ...)
    with pytest.raises(RuntimeError):
        h.deliver({P0: [record(P0, o) for o in range(6)], P1: [record(P1, o) for o in range(6)]})
    assert h.batches[:3] == [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(0, 2), (0, 3)]]
    assert h.acked(P0) == [0, 1]  # nothing of the failed chunk, nothing after it
    assert h.acked(P1) == [0, 1]  # its chunk in flight settled and was acked, then it stopped
    assert h.seeks == [(P1, 2)]  # and its unread rest is fetched again
    assert h.consumer._bulk_in_flight == 0 and h.consumer._bulk_idle.is_set()


def test_a_paused_partition_is_not_delivered_even_when_marked_buffered() -> None:
    h = Harness(batch_max=5)
    h.consumer._paused_partitions.add(P0)  # paused by backpressure after the fetch
    h.consumer._buffered_partitions.add(P0)  # and its stream buffer was under pressure once
    h.deliver({P0: [record(P0, o) for o in range(3)], P1: [record(P1, 0)]})
    assert h.batches == [[(1, 0)]]
    assert h.seeks == [(P0, 0)]
