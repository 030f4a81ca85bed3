"""The fast path's per-partition feed (streams/kafka/partition_feed.py), as pure logic.

A model of one partition: a log with holes (transaction markers, compaction), a fetch
position, at most one fetched batch in the drain loop's hands, and rewinds at any moment --
including between a fetch and its delivery. Whatever the interleaving, the records taken from
the feed are exactly the log, in order, each once: nothing skipped (Faust would commit past
it), nothing applied ahead of an earlier record.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.partition_feed import STALE, PartitionFeed


@dataclass(frozen=True)
class Rec:
    offset: int


def test_offer_take_in_order_and_hold_release() -> None:
    feed = PartitionFeed(hold_at=4, release_at=2)
    assert feed.offer([Rec(o) for o in range(5)], generation=1) == 5
    assert feed.full and not feed.drained
    assert [r.offset for r in feed.take(3)] == [0, 1, 2]
    assert not feed.full and not feed.drained  # 2 left: not under release_at yet
    feed.take(1)
    assert feed.drained
    assert feed.offer([Rec(o) for o in range(3, 7)], generation=1) == 2  # 3, 4 seen already
    assert [r.offset for r in feed.take(10)] == [4, 5, 6]


def test_rewind_returns_the_first_unread_record_and_rejects_a_stale_batch_once() -> None:
    feed = PartitionFeed(hold_at=10, release_at=1)
    feed.offer([Rec(o) for o in range(4)], generation=1)
    feed.take(1)
    assert feed.rewind(fetched_from=9) == 1  # the queue's head is earlier than the batch
    assert len(feed) == 0
    assert feed.offer([Rec(4), Rec(5)], generation=1) == STALE  # fetched before the seek
    assert feed.next_offset == 1
    assert feed.offer([Rec(1), Rec(2)], generation=1) == 2  # the re-fetch
    # Retention deleted offsets 3..4 after a rewind to 3: the same later start comes back
    # from the broker twice, and is then taken for a real hole.
    feed.take(2)
    assert feed.rewind(taken_from=3) == 3
    assert feed.offer([Rec(5)], generation=1) == STALE
    assert feed.offer([Rec(5)], generation=1) == 1


def test_a_new_generation_forgets_everything() -> None:
    feed = PartitionFeed(hold_at=10, release_at=1)
    feed.offer([Rec(o) for o in range(5, 8)], generation=1)
    feed.rewind()
    assert feed.offer([Rec(o) for o in range(0, 3)], generation=2) == 3  # from the commit
    assert [r.offset for r in feed.take(10)] == [0, 1, 2]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        PartitionFeed(hold_at=2, release_at=2)


OPS = st.sampled_from(["fetch", "deliver", "take", "rewind", "drop_fetched", "fail"])


@settings(max_examples=300, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=60),
    ops=st.lists(st.tuples(OPS, st.integers(min_value=1, max_value=7)), max_size=80),
)
def test_any_interleaving_takes_the_log_exactly_once_in_order(
    present: list[bool], ops: list[tuple[str, int]]
) -> None:
    log = [Rec(o) for o, here in enumerate(present) if here]
    end = len(present)
    feed = PartitionFeed(hold_at=8, release_at=2)
    position = 0  # the consumer's fetch position (an offset)
    in_hand: list[Rec] | None = None  # fetched, not yet offered (the drain loop's hands)
    taken: list[int] = []

    def fetch(count: int) -> None:
        nonlocal position, in_hand
        batch = [r for r in log if r.offset >= position][:count]
        if batch:
            in_hand = batch
            position = batch[-1].offset + 1
        else:
            position = end

    def deliver() -> None:
        nonlocal position, in_hand
        assert in_hand is not None
        if feed.offer(in_hand, generation=1) == STALE:
            assert feed.next_offset is not None
            position = feed.next_offset  # seek back again
        in_hand = None

    for op, n in ops:
        if op == "fetch" and in_hand is None:
            fetch(n)
        elif op == "deliver" and in_hand is not None:
            deliver()
        elif op == "take":
            taken.extend(r.offset for r in feed.take(n))
        elif op == "rewind":  # paused: the queue is dropped, the partition sought back
            target = feed.rewind()
            if target is not None:
                position = target  # the batch in hand (if any) is now stale
        elif op == "fail" and len(feed):  # a batch taken, then its handler failed
            failed = feed.take(n)
            target = feed.rewind(taken_from=failed[0].offset)
            assert target == failed[0].offset
            position = target
        elif op == "drop_fetched" and in_hand is not None:  # paused before the offer
            target = feed.rewind(fetched_from=in_hand[0].offset)
            assert target is not None
            position = target
            in_hand = None
    for _ in range(10 * end + 10):  # then run to the end of the log
        if in_hand is not None:
            deliver()
        elif position < end:
            fetch(5)
        taken.extend(r.offset for r in feed.take(3))
        if position >= end and in_hand is None and not len(feed):
            break
    assert taken == [r.offset for r in log]
