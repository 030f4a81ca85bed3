"""Enforcing a governor decision on the priority lanes (asyncio and Faust, no policy).

Retry tiers stay shared: a retry copy carries its original topic in ``recon.original.topic``,
which names its lane.

* :class:`InFlightLimiter` -- permits for records in flight (inside ``BatchProcessor.process``)
  across every lane. A lane's records go through in chunks of at most the decision's batch
  size; a chunk waits until it fits under the limit (critical may use the whole limit, the
  other lanes all but ``critical_reserve``), until its lane runs, and, for non-critical lanes,
  for the pacing delay. Critical waiters go first, then normal, then bulk.
* :class:`LaneProcessor` -- the agents' entry point: chunks a batch through the limiter and
  keeps per-lane counts and the next offset to process per partition.
* :class:`PartitionPauser` -- stops fetching a stopped lane's partitions through Faust's
  ``consumer.pause_partitions`` / ``resume_partitions`` and re-applies that every tick, because
  Faust resumes every assigned partition after a rebalance (and its buffer flow control can
  re-activate one); it only ever resumes partitions it paused itself, and rewinds each one
  before resuming it (below).

What a Faust pause really does (faust-streaming 0.15.3, aiokafka transport; measured and read):
``pause_partitions`` removes the partitions from the consumer's *active* set. aiokafka stops
returning (and, with a record batch buffered, fetching) them -- but ``Consumer.getmany``
filters the records of a fetch that already returned against that same live set, so records
of a partition paused while they were being handed out are silently dropped; and when the
partition resumes, the drain loop reads the jump in offsets as a compaction/transaction gap
(``_add_gap``) and commits past records that were never processed. So resuming without a
rewind can lose records. The pauser therefore seeks each partition it resumes back to the
offset after the last record Faust delivered (``rewind``): the dropped records are fetched
again, nothing is skipped, at worst a record is delivered twice (idempotent apply).
Records already delivered into a stream's buffer before the pause are not affected: the lane's
agent still holds them (its gate keeps them waiting while the lane is stopped).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.backpressure.lanes import LANES, Lane
from streams.failures.routing import ORIGINAL_TOPIC, SourceRecord


class LaneTopics(Protocol):
    """What the lanes need from ``TopicNames``."""

    def lane_of(self, topic: str) -> Lane | None: ...


# --- in-flight permits -----------------------------------------------------------------------


class Admission(Protocol):
    """The part of a governor decision the limiter enforces."""

    @property
    def pacing_s(self) -> float: ...

    def runs(self, lane: Lane) -> bool: ...

    def cap(self, lane: Lane) -> int: ...

    def chunk(self, lane: Lane) -> int: ...


class InFlightLimiter:
    """Bounds records in flight across lanes by the current decision (``None``: unbounded).

    ``in_use`` never exceeds the decision's limit at the moment a chunk was admitted; when
    the limit shrinks, chunks already admitted finish and no new one enters until the total
    is under the new limit.
    """

    def __init__(self, admission: Admission | None = None) -> None:
        self._admission = admission
        self._draining = False
        self.in_use = 0
        self._peak = 0
        self._waiting: Counter[tuple[Lane, bool]] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def enabled(self) -> bool:
        return self._admission is not None

    def update(self, admission: Admission | None, *, draining: bool = False) -> None:
        """New decision. ``draining`` (a rebalance is in progress) suspends the limiter:
        whatever an agent holds goes through at once, unchunked and unpaced, because Faust's
        revoke waits until every record taken from a stream is acked -- a batch held at a
        stopped lane's gate would stall the rebalance past its timeout."""
        self._admission = admission
        self._draining = draining
        self._wake()

    def take_peak(self) -> int:
        """Highest ``in_use`` since the previous call."""
        peak, self._peak = self._peak, self.in_use
        return peak

    async def acquire(self, lane: Lane, wanted: int, *, gated: bool = True) -> int:
        """Wait for permits for up to ``wanted`` records of ``lane``; returns how many were
        granted (>= 1). ``gated=False`` ignores the lane's stop (retry tiers: a stopped lane
        must not block critical retries queued behind its records in a shared tier)."""
        if wanted <= 0:
            raise ValueError("wanted must be positive")
        admission = self._admission
        if admission is None or self._draining:
            self._take(wanted)
            return wanted
        if lane is not Lane.CRITICAL and admission.pacing_s > 0:
            await asyncio.sleep(admission.pacing_s)
        key = (lane, gated)
        self._waiting[key] += 1
        try:
            for _ in range(1_000_000_000):  # bounded in count; each pass waits for a change
                admission = self._admission
                if admission is None or self._draining:
                    self._take(wanted)
                    return wanted
                if self._may_run(admission, lane, gated) and not self._outranked(admission, lane):
                    grant = max(1, min(wanted, admission.chunk(lane)))
                    if self.in_use + grant <= admission.cap(lane):
                        self._take(grant)
                        return grant
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            raise RuntimeError("in-flight limiter: too many wake-ups")  # pragma: no cover
        finally:
            self._waiting[key] -= 1
            if self._waiting[key] <= 0:
                del self._waiting[key]
            self._wake()  # the lanes below may have been held back by this waiter

    def release(self, granted: int) -> None:
        self.in_use -= granted
        self._wake()

    def _take(self, n: int) -> None:
        self.in_use += n
        self._peak = max(self._peak, self.in_use)

    def _may_run(self, admission: Admission, lane: Lane, gated: bool) -> bool:
        return not gated or admission.runs(lane)

    def _outranked(self, admission: Admission, lane: Lane) -> bool:
        for higher in LANES[: LANES.index(lane)]:
            if self._waiting[(higher, False)] > 0:
                return True
            if self._waiting[(higher, True)] > 0 and self._may_run(admission, higher, True):
                return True
        return False

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


# --- processing by lane ----------------------------------------------------------------------


Process = Callable[[Sequence[SourceRecord]], Awaitable[object]]


@dataclass(slots=True)
class LaneCounters:
    processed: Counter[Lane] = field(default_factory=Counter)
    # (topic, partition) -> next offset after the last record processed there
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class LaneProcessor:
    """Processes the agents' batches lane by lane through the limiter."""

    def __init__(
        self,
        process: Process,
        topics: LaneTopics,
        limiter: InFlightLimiter,
        *,
        on_settled: Callable[[Lane, Sequence[SourceRecord], float], None] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        keep_entity_order: bool = False,
    ) -> None:
        self._process = process
        self._keep_entity_order = keep_entity_order
        self._topics = topics
        self.limiter = limiter
        self._on_settled = on_settled
        self._clock_ms = clock_ms
        self.counters = LaneCounters()

    async def process(self, lane: Lane, records: Sequence[SourceRecord]) -> None:
        """Process a batch of one lane's topic, in chunks the limiter admits."""
        await self._chunked(lane, records, gated=True)

    async def process_retry(self, records: Sequence[SourceRecord]) -> None:
        """Process records from a shared retry tier: each in its original lane, critical
        first, without waiting for a stopped lane (see :meth:`InFlightLimiter.acquire`)."""
        by_lane: dict[Lane, list[SourceRecord]] = {lane: [] for lane in LANES}
        # With entity ordering, all of an entity's records go with its first one's lane, so
        # "critical first" never lets a later event of an entity overtake an earlier one.
        entity_lane: dict[tuple[int, bytes], Lane] = {}
        for record in records:
            lane = self.lane_of_record(record)
            if self._keep_entity_order and record.key is not None:
                lane = entity_lane.setdefault((record.partition, record.key), lane)
            by_lane[lane].append(record)
        for lane in LANES:
            if by_lane[lane]:
                await self._chunked(lane, by_lane[lane], gated=False)

    def lane_of_record(self, record: SourceRecord) -> Lane:
        original = record.header(ORIGINAL_TOPIC)
        topic = original.decode("utf-8", "replace") if original is not None else record.topic
        return self._topics.lane_of(topic) or Lane.NORMAL

    async def _chunked(self, lane: Lane, records: Sequence[SourceRecord], *, gated: bool) -> None:
        done = 0
        while done < len(records):  # each pass settles >= 1 record
            granted = await self.limiter.acquire(lane, len(records) - done, gated=gated)
            chunk = records[done : done + granted]
            try:
                await self._process(chunk)
            finally:
                self.limiter.release(granted)
            done += granted
            self._settled(lane, chunk)

    def _settled(self, lane: Lane, chunk: Sequence[SourceRecord]) -> None:
        self.counters.processed[lane] += len(chunk)
        offsets = self.counters.next_offsets
        for record in chunk:
            tp = (record.topic, record.partition)
            if record.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = record.offset + 1
        if self._on_settled is not None:
            self._on_settled(lane, chunk, self._clock_ms() / 1000)


# --- pausing partitions ----------------------------------------------------------------------


class PausableConsumer(Protocol):
    """The part of Faust's consumer used here (``app.consumer``, aiokafka transport)."""

    def pause_partitions(self, tps: Iterable[Any]) -> None: ...

    def resume_partitions(self, tps: Iterable[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class PauseChange:
    paused: frozenset[Any]
    resumed: frozenset[Any]


class PartitionPauser:
    """Keeps exactly the assigned partitions of stopped lanes paused.

    ``apply`` is called every governor tick. While a rebalance is in progress it does
    nothing (Faust pauses and resumes everything itself then). Otherwise it pauses the
    partitions of stopped lanes -- again each tick, since Faust's post-rebalance resume and its
    buffer flow control may have re-activated them -- and resumes the ones it paused whose lane
    runs again or that are no longer assigned to us. It never touches partitions it did not
    pause, and ``release`` resumes all of its own (governor switched off, worker stopping).
    """

    SETTLE_TIMEOUT_S = 60.0  # if Faust never signals the end of a rebalance, act anyway

    def __init__(self, topics: LaneTopics, clock: Callable[[], float] = time.monotonic) -> None:
        self._topics = topics
        self._clock = clock
        self._paused: frozenset[Any] = frozenset()
        self._settling_since: float | None = None

    @property
    def paused(self) -> frozenset[Any]:
        return self._paused

    async def apply(
        self,
        consumer: PausableConsumer,
        running: Collection[Lane],
        assignment: Iterable[Any],
        *,
        rebalancing: bool,
        rewind: Callable[[Any], Awaitable[None]] | None = None,
    ) -> PauseChange:
        """Pause the assigned partitions of stopped lanes; rewind (``rewind(tp)``: seek it to
        the first record not delivered) and resume the ones we paused that may run again."""
        if self._settling_since is not None:
            if self._clock() - self._settling_since < self.SETTLE_TIMEOUT_S:
                rebalancing = True
            else:
                self._settling_since = None
        if rebalancing:
            return PauseChange(frozenset(), frozenset())
        assigned = frozenset(assignment)
        desired = frozenset(
            tp
            for tp in assigned
            if (lane := self._topics.lane_of(tp.topic)) is not None and lane not in running
        )
        resume = (self._paused & assigned) - desired
        if desired:
            consumer.pause_partitions(desired)
        if resume:
            if rewind is not None:
                for tp in sorted(resume):
                    await rewind(tp)
            consumer.resume_partitions(resume)
        change = PauseChange(desired - self._paused, self._paused - desired)
        self._paused = desired
        return change

    def forget(self) -> None:
        """A new assignment: Faust paused every assigned partition itself and resumes them all
        once its recovery is over (:meth:`rebalance_complete`); until then ``apply`` does
        nothing -- resuming one early would undo Faust's own pause -- and from then on it
        pauses what is still warranted."""
        self._paused = frozenset()
        self._settling_since = self._clock()

    def rebalance_complete(self) -> None:
        """Faust's ``on_rebalance_complete`` (sent right before it resumes every partition)."""
        self._settling_since = None

    async def release(
        self,
        consumer: PausableConsumer,
        assignment: Iterable[Any],
        rewind: Callable[[Any], Awaitable[None]] | None = None,
    ) -> frozenset[Any]:
        """Resume (rewound) every partition we paused."""
        resume = self._paused & frozenset(assignment)
        if resume:
            if rewind is not None:
                for tp in sorted(resume):
                    await rewind(tp)
            consumer.resume_partitions(resume)
        self._paused = frozenset()
        return resume
