"""One partition's fetched-but-not-yet-applied records on the fast path (no I/O, no Faust).

The fast path's drain loop (streams/kafka/fast_consumer.py) must never wait on the sink:
while one partition's batch waits on a slow downstream, the other partitions -- the critical
lane above all -- must keep being fetched and applied. So each partition gets a
:class:`PartitionFeed`: the drain loop *offers* what it fetched and goes on, and the
partition's own task *takes* chunks from it in offset order and applies them. The feed is
bounded: past ``hold_at`` records the partition is *held* (not fetched) until its task has
brought it back under ``release_at``.

The hard part is keeping "every record exactly in offset order, none skipped" across a
rewind. When a partition's queued records must be dropped (it was paused, or flow stopped),
the consumer seeks the partition back to the first dropped record so they are fetched again.
But a fetch that returned *before* the seek may still be on its way to the feed (the drain
loop holds it across an ``await``); its records start past the rewind target. Queuing them
would put later records ahead of the re-fetched earlier ones, the partition's read offset
would jump, and Faust would register the hole as a gap and commit past records never
applied. So after a rewind to ``R`` the feed is *strict*: the next batch it accepts must
start exactly at ``R``; anything else is stale, dropped, and the partition is sought back to
``R`` once more (``offer`` returns :data:`STALE`). Should the log really have no record at
``R`` any more (deleted by retention meanwhile), the re-fetch from ``R`` starts at the same
later offset every time: the second time it is accepted as a real hole.

A new consumer generation (a rebalance) resets the feed: Faust itself positions every
assigned partition at its committed offset, and nothing queued in an older generation may be
applied.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol

STALE: Final = -1
"""``offer``'s answer for a batch fetched before a rewind: seek back to ``next_offset``."""


class FetchedRecord(Protocol):
    """What the feed needs of a fetched record (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def offset(self) -> int: ...


class PartitionFeed:
    """Records of one partition between fetch and apply, in offset order."""

    def __init__(self, hold_at: int, release_at: int) -> None:
        if not 0 <= release_at < hold_at:
            raise ValueError("need 0 <= release_at < hold_at")
        self.hold_at = hold_at
        self.release_at = release_at
        self.generation: int | None = None
        self._records: deque[Any] = deque()
        # The offset the next fetched record should have: set after each accepted batch and
        # by a rewind; None when unknown (new feed, new generation).
        self._next_offset: int | None = None
        self._strict = False  # right after a rewind: the next batch must start at _next_offset
        self._stale_start: int | None = None  # first offset of the last batch dropped as stale

    def __len__(self) -> int:
        return len(self._records)

    @property
    def next_offset(self) -> int | None:
        return self._next_offset

    @property
    def full(self) -> bool:
        """Hold the partition (stop fetching it)."""
        return len(self._records) >= self.hold_at

    @property
    def drained(self) -> bool:
        """A held partition may be fetched again."""
        return len(self._records) < self.release_at

    def offer(self, batch: Sequence[FetchedRecord], generation: int) -> int:
        """Queue the records of a fetched ``batch`` that continue the partition; return how
        many were queued (re-fetched duplicates are dropped), or :data:`STALE`."""
        if generation != self.generation:
            self.reset(generation)
        start = 0
        expected = self._next_offset
        if expected is not None:
            while start < len(batch) and batch[start].offset < expected:
                start += 1  # already queued or applied: a re-fetch after a rewind
        if start == len(batch):
            return 0
        first = batch[start].offset
        stale = self._strict and expected is not None and first != expected
        if stale and first != self._stale_start:
            self._stale_start = first
            return STALE  # fetched before the rewind; seek to `expected` again
        # (The same stale start twice after a rewind: the log has no record at `expected`.)
        self._strict = False
        self._stale_start = None
        self._records.extend(batch[start:] if start else batch)
        self._next_offset = batch[-1].offset + 1
        return len(batch) - start

    def take(self, limit: int) -> list[Any]:
        """The next at most ``limit`` records, in offset order."""
        records = self._records
        count = min(limit, len(records))
        return [records.popleft() for _ in range(count)]

    def rewind(
        self, *, taken_from: int | None = None, fetched_from: int | None = None
    ) -> int | None:
        """Drop everything queued; return the offset to seek the partition back to (the
        first record that is now unread), or None when nothing was dropped.

        ``taken_from``: the first offset of a batch taken from the feed but not applied
        (it precedes everything queued). ``fetched_from``: the first offset of a fetched
        batch that is dropped instead of offered; records of it below ``next_offset`` were
        queued or applied already, so only what follows them counts as unread.
        """
        if taken_from is None and fetched_from is None and not self._records:
            return None
        if taken_from is not None:
            target = taken_from
        elif self._records:
            target = self._records[0].offset
        elif self._next_offset is not None:
            # Everything before it was taken; after a rewind not yet re-fetched, it is that
            # rewind's target (still unread).
            target = self._next_offset
        else:
            assert fetched_from is not None
            target = fetched_from
        self._records.clear()
        self._next_offset = target
        self._strict = True
        self._stale_start = None
        return target

    def reset(self, generation: int | None = None) -> None:
        """Forget everything: a new generation, or the partition is no longer ours."""
        self._records.clear()
        self.generation = generation
        self._next_offset = None
        self._strict = False
        self._stale_start = None
