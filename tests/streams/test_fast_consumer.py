"""The fast path's bulk delivery (streams/kafka/fast_consumer.py), without a broker.

A ``BulkConsumer`` is built without Faust's start-up and given just the state its drain loop
reads (Faust's ack bookkeeping, read offsets, flow flag, assignment); ``seek`` is recorded.
What is checked: chunks of ``batch_max`` in offset order, offsets acked only after the handler
returned and never when it raised, re-fetched records skipped, a pause mid-fetch rewinds the
partition to its first undelivered record, holes in offsets become gaps; and the per-partition
feeds: a partition waiting on its sink does not hold up the others, a full feed is left out of
the fetch until it drains, and a batch fetched before a rewind is not queued after it.
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


TOPIC2 = "in.events.critical"
P0, P1 = TP((TOPIC, 0)), TP((TOPIC, 1))
Q0 = TP((TOPIC2, 0))  # another registered topic (a lane): its own task


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
        self.block: dict[str, asyncio.Event] = {}  # topic -> its handler waits for it
        self.assigned = {P0, P1, Q0}
        consumer = BulkConsumer.__new__(BulkConsumer)
        app = SimpleNamespace(
            consumer_generation_id=1,
            monitor=None,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            _recon_bulk={TOPIC: (self.handler, batch_max), TOPIC2: (self.handler, batch_max)},
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
            "assignment": lambda: self.assigned,
            "seek": self.seek,
            "_add_gap": self.add_gap,
        }
        for name, value in state.items():
            object.__setattr__(consumer, name, value)
        consumer._init_bulk_state()
        self.consumer = consumer
        self.app = app

    async def handler(self, records: Sequence[SourceRecord]) -> None:
        self.batches.append([(r.partition, r.offset) for r in records])
        if self.on_batch is not None:
            self.on_batch(len(self.batches))
        if self.fail_on == len(self.batches):
            raise RuntimeError("sink exploded")
        gate = self.block.get(records[0].topic)
        if gate is not None:
            await gate.wait()
        if self.suspend:
            await asyncio.sleep(0)  # let the other partitions run meanwhile

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.consumer._read_offset[tp] = offset or None

    async def add_gap(self, tp: TP, begin: int, end: int) -> None:
        self.gaps.append((tp, begin, end))

    def acked(self, tp: TP) -> list[int]:
        return sorted(self.consumer._acked[tp])

    def of(self, partition: int) -> list[list[int]]:
        """Per batch handed to the handler, the offsets of one partition's records in it."""
        per_batch = ([o for p, o in b if p == partition] for b in self.batches)
        return [offsets for offsets in per_batch if offsets]

    def flat(self, partition: int) -> list[int]:
        return [o for offsets in self.of(partition) for o in offsets]

    async def settle(self) -> None:
        """Let the feed tasks run until every feed is empty and no chunk is in flight."""
        consumer = self.consumer
        for _ in range(10_000):
            await asyncio.sleep(0)
            busy = any(len(f) for f in consumer._feeds.values()) or consumer._bulk_in_flight
            if not busy:
                break
        if consumer._bulk_failure is not None:
            raise consumer._bulk_failure

    async def deliver_async(self, records: dict[TP, list[Any]], active: set[TP] | None) -> None:
        await self.consumer._deliver(records, active if active is not None else {P0, P1, Q0})
        await self.settle()

    def deliver(self, records: dict[TP, list[Any]], active: set[TP] | None = None) -> None:
        async def run() -> None:
            try:
                await self.deliver_async(records, active)
            finally:
                self.consumer._stop_feeds()

        asyncio.run(run())


def test_batches_of_at_most_batch_max_in_offset_order_acked_after_the_handler() -> None:
    h = Harness(batch_max=3)
    h.deliver({P0: [record(P0, o) for o in range(7)], P1: [record(P1, o) for o in range(2)]})
    assert all(len(batch) <= 3 for batch in h.batches) and len(h.batches) == 3
    assert h.flat(0) == list(range(7)) and h.flat(1) == [0, 1]
    assert h.acked(P0) == list(range(7)) and h.acked(P1) == [0, 1]
    assert h.consumer._n_acked == 9
    assert h.consumer._read_offset[P0] == 6
    assert h.seeks == [] and h.gaps == []


def test_a_failing_handler_acks_nothing_of_its_batch_and_stops_the_worker() -> None:
    h = Harness(batch_max=3)
    h.fail_on = 2
    with pytest.raises(RuntimeError):
        h.deliver({P0: [record(P0, o) for o in range(7)]})
    assert h.acked(P0) == [0, 1, 2]  # the first batch only
    assert h.consumer._read_offset[P0] == 3  # rewound to the failed batch
    assert h.seeks == [(P0, 3)]


def test_refetched_records_are_skipped_and_holes_become_gaps() -> None:
    h = Harness(batch_max=10)
    h.consumer._read_offset[P0] = 4  # offsets up to 4 were delivered already
    h.deliver({P0: [record(P0, o) for o in (2, 3, 4, 5, 9, 10)]})
    assert h.batches == [[(0, 4), (0, 5), (0, 9), (0, 10)]]
    assert h.gaps == [(P0, 6, 9)]  # 6..8 are not in the log (e.g. transaction markers)
    assert h.acked(P0) == [4, 5, 9, 10]


def test_a_pause_mid_fetch_rewinds_to_the_first_undelivered_record() -> None:
    h = Harness(batch_max=2)

    def pause_after_p0(n: int) -> None:
        if any(p == 0 for p, _ in h.batches[-1]):
            h.consumer._paused_partitions.add(P0)

    h.on_batch = pause_after_p0
    h.deliver({P0: [record(P0, o) for o in range(5)], P1: [record(P1, o) for o in range(2)]})
    assert h.flat(0) == [0, 1] and h.flat(1) == [0, 1]  # P1 still delivered
    assert h.seeks == [(P0, 2)]  # offsets 2..4 are fetched again on resume
    assert h.acked(P0) == [0, 1]


def test_a_stopped_flow_delivers_nothing_more() -> None:
    h = Harness(batch_max=2)

    def stop_flow(n: int) -> None:
        if n == 1:
            h.consumer.flow_active = False

    h.on_batch = stop_flow
    h.deliver({P0: [record(P0, o) for o in range(4)], P1: [record(P1, o) for o in range(3)]})
    assert len(h.batches) == 1 and len(h.batches[0]) == 2
    first_unread = {P0: len(h.flat(0)), P1: len(h.flat(1))}
    assert sorted(h.seeks) == sorted(first_unread.items())
    assert h.acked(P0) == h.flat(0) and h.acked(P1) == h.flat(1)


def test_a_partition_revoked_while_applying_is_not_acked() -> None:
    h = Harness(batch_max=5)
    h.on_batch = lambda n: setattr(h, "assigned", {P1})
    h.deliver({P0: [record(P0, o) for o in range(3)]})
    assert h.batches == [[(0, 0), (0, 1), (0, 2)]]
    assert h.acked(P0) == []


def test_records_queued_before_a_rebalance_are_not_applied_after_it() -> None:
    h = Harness(batch_max=2)
    gate = asyncio.Event()
    h.block[TOPIC] = gate

    async def run() -> None:
        await h.consumer._deliver({P0: [record(P0, o) for o in range(6)]}, {P0})
        for _ in range(5):
            await asyncio.sleep(0)  # batch [0, 1] is in flight, [2..5] queued
        h.app.consumer_generation_id = 2  # a rebalance; the partition came back to us
        gate.set()
        await h.settle()
        # The new generation fetches from the committed offset: here 2.
        await h.deliver_async({P0: [record(P0, o) for o in range(2, 4)]}, {P0})
        h.consumer._stop_feeds()

    asyncio.run(run())
    assert h.of(0) == [[0, 1], [2, 3]]  # nothing of the old generation's queue
    assert h.seeks == []


def test_a_failure_stops_every_partition_of_the_lane_and_rewinds_them() -> None:
    h = Harness(batch_max=2)
    h.fail_on = 3
    with pytest.raises(RuntimeError):
        h.deliver({P0: [record(P0, o) for o in range(6)], P1: [record(P1, o) for o in range(6)]})
    assert len(h.batches) == 3
    failed = h.batches[2]
    for tp, partition in ((P0, 0), (P1, 1)):
        applied = [o for batch in h.batches[:2] for p, o in batch if p == partition]
        assert h.acked(tp) == applied  # nothing of the failed batch, nothing after it
        assert (tp, len(applied)) in h.seeks  # the unread rest is fetched again
    assert {p for p, _ in failed} <= {0, 1}
    assert h.consumer._bulk_in_flight == 0 and h.consumer._bulk_idle.is_set()


def test_a_paused_partition_is_not_delivered_even_when_marked_buffered() -> None:
    h = Harness(batch_max=5)
    h.consumer._paused_partitions.add(P0)  # paused by backpressure after the fetch
    h.consumer._buffered_partitions.add(P0)  # and its stream buffer was under pressure once
    h.deliver({P0: [record(P0, o) for o in range(3)], P1: [record(P1, 0)]})
    assert h.batches == [[(1, 0)]]
    assert h.seeks == [(P0, 0)]


def test_a_lane_waiting_on_its_sink_does_not_hold_up_another_lane() -> None:
    """The reason the feeds exist: a slow downstream for one lane (bulk) must not stop
    another lane (critical) from being fetched and applied."""
    h = Harness(batch_max=2)
    gate = asyncio.Event()
    h.block[TOPIC] = gate

    async def run() -> None:
        await h.consumer._deliver({P0: [record(P0, o) for o in range(4)]}, {P0, Q0})
        for _ in range(5):
            await asyncio.sleep(0)
        assert h.of(0) == [[0, 1]] and h.acked(P0) == []  # waiting on its sink
        # The drain loop is free: the next fetch, for Q0, is applied while P0 still waits.
        await asyncio.wait_for(h.consumer._deliver({Q0: [record(Q0, 0)]}, {P0, Q0}), 1)
        for _ in range(5):
            await asyncio.sleep(0)
        assert h.batches[-1] == [(0, 0)] and h.acked(Q0) == [0]
        assert h.acked(P0) == []
        gate.set()
        await h.settle()
        h.consumer._stop_feeds()

    asyncio.run(run())
    assert h.batches[2] == [(0, 2), (0, 3)] and h.acked(P0) == [0, 1, 2, 3]


def test_batches_take_partitions_in_turn() -> None:
    h = Harness(batch_max=4)
    gate = asyncio.Event()
    h.block[TOPIC] = gate

    async def run() -> None:
        await h.consumer._deliver(
            {P0: [record(P0, o) for o in range(20)], P1: [record(P1, o) for o in range(20)]},
            {P0, P1},
        )
        gate.set()
        await h.settle()
        h.consumer._stop_feeds()

    asyncio.run(run())
    assert h.flat(0) == list(range(20)) and h.flat(1) == list(range(20))
    firsts = [batch[0][0] for batch in h.batches]
    assert firsts.count(0) >= 3 and firsts.count(1) >= 3  # neither partition waits for the other


def test_a_full_feed_is_left_out_of_the_fetch_until_it_drains() -> None:
    h = Harness(batch_max=2)  # held at 4 chunks (8 records), released under 1 chunk (2)
    gate = asyncio.Event()
    h.block[TOPIC] = gate
    fetched_for: list[set[TP]] = []

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[Any]]:
        fetched_for.append(set(active_partitions))
        return {}

    object.__setattr__(h.consumer, "_getmany", getmany)
    object.__setattr__(h.consumer, "_get_active_partitions", lambda: {P0, P1})

    async def run() -> None:
        consumer = h.consumer
        await consumer._deliver({P0: [record(P0, o) for o in range(10)]}, {P0, P1})
        for _ in range(5):
            await asyncio.sleep(0)
        assert consumer._held == {P0}  # 8 queued behind the chunk in flight
        await consumer._wait_next_records(1.0)
        assert fetched_for == [{P1}]
        gate.set()
        await h.settle()
        assert consumer._held == set() and consumer._fetch_wake.is_set()
        consumer._stop_feeds()

    asyncio.run(run())
    assert [o for chunk in h.of(0) for o in chunk] == list(range(10))


def test_a_batch_fetched_before_a_rewind_is_not_queued_after_it() -> None:
    """Records 2..3 are queued when the partition is paused: the feed drops them and seeks
    back to 2. A fetch that returned before that seek (4..5) arrives next: queuing it would
    put 4 before 2 (and Faust would commit past 2..3 as a gap), so it is dropped and the
    partition sought to 2 again; the re-fetch from 2 is applied in order."""
    h = Harness(batch_max=2)
    gate = asyncio.Event()
    h.block[TOPIC] = gate

    async def run() -> None:
        consumer = h.consumer
        await consumer._deliver({P0: [record(P0, o) for o in range(4)]}, {P0})
        for _ in range(5):
            await asyncio.sleep(0)  # [0, 1] in flight, [2, 3] queued
        consumer._paused_partitions.add(P0)
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert h.seeks == [(P0, 2)]
        consumer._paused_partitions.discard(P0)
        await consumer._deliver({P0: [record(P0, o) for o in (4, 5)]}, {P0})  # stale
        assert h.seeks == [(P0, 2), (P0, 2)]
        await h.deliver_async({P0: [record(P0, o) for o in range(2, 6)]}, {P0})
        consumer._stop_feeds()

    asyncio.run(run())
    assert [o for chunk in h.of(0) for o in chunk] == list(range(6))
    assert h.acked(P0) == list(range(6)) and h.gaps == []
