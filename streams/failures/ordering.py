"""Per-entity ordering in a worker (``RECON_ENTITY_ORDERING``): the ledger, kept true.

:class:`EntityOrdering` owns the worker's :class:`~streams.failures.entity_order.EntityLedger`
and keeps it complete for the partitions the worker owns; :class:`BatchOrder` is its view for
one ``BatchProcessor.process`` call (which records to park, which copies to reserve).

Why a per-worker ledger is complete: Faust's assignor co-partitions topics that have the same
partition count and the same subscribers, and every worker of the group subscribes to the
lane topics and every retry tier, all created with the main topic's partition count. A retry
or parked copy keeps its source partition. So partition p of every lane topic and every tier
is owned by one worker, and every record of an entity (one key, one partition) passes through
that worker. :func:`copartitioning_problems` checks the assignment actually received.

Rebuilt at every assignment, never trusted across one: on Faust's ``on_partitions_assigned``
(a synchronous receiver, so it runs before Faust's recovery task can resume anything) the
ledger drops revoked partitions, forgets the rest, and starts a scan of every retry tier's
assigned partitions from the group's committed offset to the fetch high watermark
(streams/kafka/retry_scan.py). Faust awaits ``on_rebalance_complete`` before it resumes the
partitions, seeks them to their committed offsets and resumes the flow (tables/recovery.py,
``_resume_streams``), for the per-message path and the fast path alike; that receiver waits
for the scan. And whatever path a batch takes, ``BatchOrder.ready`` holds it until its
partitions' ledger is built (starting a scan itself if none is under way).

Records the scan counts that this worker processed but had not committed yet are consumed
again from the committed offset and discharged again, which identity by offset makes harmless;
records it processed and the group committed in between are in the ledger's memory of
discharged offsets and not counted at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Gauge, Histogram

from streams.failures.entity_order import EntityLedger, Reservation, Scanned
from streams.failures.routing import ATTEMPT, OutgoingRecord, SourceRecord, park, with_due
from streams.ops import metrics
from streams.topics import TopicNames

log = logging.getLogger(__name__)

T = TypeVar("T")

Scan = Callable[[Sequence[int]], Awaitable[list[Scanned]]]

outstanding_records = Gauge(
    "recon_entity_order_outstanding_records",
    "Records outstanding in the retry tiers that later records of their entity must wait for",
    registry=metrics.REGISTRY,
)
rebuild_seconds = Histogram(
    "recon_entity_order_rebuild_seconds",
    "Time to rebuild the entity-ordering ledger from the retry tiers after an assignment",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=metrics.REGISTRY,
)

REBUILD_RETRY_S = 1.0


def copartitioning_problems(assigned: Iterable[tuple[str, int]], topics: Iterable[str]) -> str:
    """'' if every topic of ``topics`` is assigned the same partitions, else what differs."""
    by_topic: dict[str, set[int]] = defaultdict(set)
    names = set(topics)
    for topic, partition in assigned:
        if topic in names:
            by_topic[topic].add(partition)
    sets = {topic: frozenset(by_topic.get(topic, set())) for topic in sorted(names)}
    if len(set(sets.values())) <= 1:
        return ""
    return "; ".join(f"{topic}: {sorted(parts)}" for topic, parts in sets.items())


class EntityOrdering:
    """The worker's ledger, rebuilt at each assignment; see the module docstring."""

    def __init__(
        self,
        topics: TopicNames,
        scan: Scan,
        *,
        tiers: int,
        build_wait_s: float = 60.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.ledger = EntityLedger()
        self.topics = topics
        self.tiers = tiers
        self._scan = scan
        self._build_wait_s = build_wait_s
        self.clock_ms = clock_ms
        self._generation = 0
        self._assigned: frozenset[int] | None = None  # None until the first assignment
        self._ready: set[int] = set()
        self._building: set[int] = set()
        self._builds: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None

    # --- wiring ------------------------------------------------------------------------------

    def attach(self, app: Any) -> None:
        """Connect to the Faust app's rebalance signals."""
        app.on_partitions_assigned.connect(self._on_partitions_assigned)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    def _on_partitions_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        ours = frozenset((*self.topics.lanes.values(), *self.topics.retries))
        tps = [(str(tp.topic), int(tp.partition)) for tp in assigned]
        problems = copartitioning_problems(tps, ours)
        if problems:
            log.error(
                "RECON_ENTITY_ORDERING: the assignment is not co-partitioned (%s); an entity's "
                "records may be processed by more than one worker and their order is not "
                "guaranteed. Give every lane and retry topic the main topic's partition count "
                "and run the same topics on every worker.",
                problems,
            )
        self.on_assigned({p for t, p in tps if t in ours})

    async def _on_rebalance_complete(self, sender: Any, **kwargs: Any) -> None:
        """Awaited by Faust before it resumes the assigned partitions: wait for the scan."""
        assigned = self._assigned or frozenset()
        try:
            await asyncio.wait_for(self._wait_ready(assigned), timeout=self._build_wait_s)
        except TimeoutError:
            log.error(
                "RECON_ENTITY_ORDERING: ledger of partitions %s not rebuilt after %.0fs; "
                "their records wait until it is",
                sorted(assigned - self._ready),
                self._build_wait_s,
            )

    # --- assignment and rebuild --------------------------------------------------------------

    def on_assigned(self, partitions: Iterable[int]) -> None:
        """A new assignment: drop what was revoked, rescan everything assigned."""
        assigned = frozenset(partitions)
        self._generation += 1
        self._assigned = assigned
        self._ready.clear()
        self._building.clear()
        self.ledger.retain(assigned)
        self._notify()
        if assigned:
            self._start_build(assigned)
        log.info("entity ordering: assigned partitions %s; rebuilding", sorted(assigned))

    def _start_build(self, partitions: frozenset[int]) -> None:
        # Forget now, synchronously: nothing decides for these partitions until the scan is in.
        self.ledger.reset(partitions)
        self._building |= partitions
        task = asyncio.ensure_future(self._rebuild(self._generation, partitions))
        self._builds.add(task)
        task.add_done_callback(self._builds.discard)

    async def _rebuild(self, generation: int, partitions: frozenset[int]) -> None:
        started = time.monotonic()
        while generation == self._generation:
            try:
                scanned = await self._scan(sorted(partitions))
                break
            except Exception as exc:  # a broker hiccup: the partitions wait, then retry
                log.warning("entity ordering: rescan of %s failed (%r); retrying", partitions, exc)
                await asyncio.sleep(REBUILD_RETRY_S)
        else:
            return  # a newer assignment took over
        if generation != self._generation:
            return
        for record in scanned:
            if record.partition in partitions:
                self.ledger.add(record)
        self._ready |= partitions
        self._building -= partitions
        elapsed = time.monotonic() - started
        rebuild_seconds.observe(elapsed)
        outstanding_records.set(len(self.ledger))
        log.info(
            "entity ordering: ledger of partitions %s rebuilt in %.2fs: %d records outstanding "
            "for %d entities",
            sorted(partitions),
            elapsed,
            len(self.ledger),
            self.ledger.entities,
        )
        self._notify()

    async def _wait_ready(self, partitions: Iterable[int]) -> None:
        wanted = set(partitions)
        while True:
            if self._assigned is not None:
                wanted &= self._assigned  # revoked meanwhile: nothing to wait for
            missing = wanted - self._ready
            if not missing:
                return
            unbuilt = frozenset(missing - self._building)
            if unbuilt:
                # No scan covers them (no assignment signal seen yet): scan them now.
                if self._assigned is None:
                    self._assigned = frozenset()
                self._assigned |= unbuilt
                self._start_build(unbuilt)
            changed = self._changed_event()
            await changed.wait()

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def owns(self, partition: int) -> bool:
        return self._assigned is not None and partition in self._assigned

    # --- per batch ---------------------------------------------------------------------------

    def begin(self) -> BatchOrder:
        return BatchOrder(self)

    def stage(self, record: SourceRecord) -> int:
        try:
            return self.topics.retry_tier(record.topic)
        except ValueError:
            return 0  # not one of ours (a test's topic): treat as a lane


@dataclass(slots=True)
class ParkedRecord:
    record: SourceRecord
    reservation: Reservation
    behind: int


@dataclass(slots=True)
class BatchOrder:
    """Ordering decisions for one batch, in the batch's order.

    ``hold`` is called on every group of records about to be applied -- the whole batch,
    and again on each part when ``BatchProcessor._apply`` splits it (the half-open trickle,
    one-by-one isolation) -- so a record whose entity had an earlier record of this very
    batch sent to a retry tier meanwhile is parked too, never applied ahead of it.
    """

    ordering: EntityOrdering
    parked: list[ParkedRecord] = field(default_factory=list)
    _reserved: dict[tuple[str, int, int], Reservation] = field(default_factory=dict)

    async def ready(self, records: Sequence[SourceRecord]) -> None:
        """Wait until the ledger of the batch's partitions is built."""
        await self.ordering._wait_ready({r.partition for r in records})

    def hold(self, decoded: list[tuple[SourceRecord, T]]) -> list[tuple[SourceRecord, T]]:
        """The pairs to apply now; the others are parked (kept in ``parked``)."""
        ledger = self.ordering.ledger
        apply: list[tuple[SourceRecord, T]] = []
        for pair in decoded:
            record = pair[0]
            key = record.key
            tier = None
            if key is not None and self.ordering.owns(record.partition):
                tier = ledger.park_tier(record.partition, key, self.ordering.stage(record))
            if key is None or tier is None:
                apply.append(pair)
                continue
            behind = ledger.outstanding(record.partition, key)
            reservation = ledger.reserve(record.partition, key, tier)
            self.parked.append(ParkedRecord(record, reservation, behind))
        return apply

    def failing(self, records: Iterable[SourceRecord]) -> None:
        """These records go to their next retry tier: later records of their entities must
        wait for them from now on (the DLT is final and holds nothing up)."""
        for record in records:
            next_tier = (record.int_header(ATTEMPT) or 0) + 1
            if (
                record.key is None
                or next_tier > self.ordering.tiers
                or not self.ordering.owns(record.partition)
            ):
                continue
            ident = (record.topic, record.partition, record.offset)
            if ident not in self._reserved:
                self._reserved[ident] = self.ordering.ledger.reserve(
                    record.partition, record.key, next_tier
                )

    def copies(
        self, failed: Sequence[tuple[SourceRecord, OutgoingRecord]], now_ms: int
    ) -> tuple[list[OutgoingRecord], list[OutgoingRecord]]:
        """(retry/DLT copies with due times that never fall behind their entity's earlier
        copies in the same tier, parked copies). Dues are assigned in event order: failures
        before parks, since once an entity has a record parked in a batch, every later one
        of that batch is parked too."""
        ledger = self.ordering.ledger
        out: list[OutgoingRecord] = []
        for record, copy in failed:
            reservation = self._reserved.get((record.topic, record.partition, record.offset))
            if copy.due_ms is None or reservation is None:
                out.append(copy)
                continue
            due = max(
                copy.due_ms, ledger.last_due_ms(record.partition, reservation.key, reservation.tier)
            )
            ledger.set_due(reservation, due)
            out.append(copy if due == copy.due_ms else with_due(copy, due))
        parked: list[OutgoingRecord] = []
        for item in self.parked:
            res = item.reservation
            due = max(now_ms, ledger.last_due_ms(res.partition, res.key, res.tier))
            ledger.set_due(res, due)
            parked.append(
                park(
                    item.record,
                    res.tier,
                    topics=self.ordering.topics,
                    due_ms=due,
                    behind=item.behind,
                )
            )
        return out, parked

    def acked(
        self,
        failed: Sequence[SourceRecord],
        failed_offsets: Sequence[int | None],
        parked_offsets: Sequence[int | None],
    ) -> None:
        """Every copy is acked: the reservations become offsets in their tiers."""
        ledger = self.ordering.ledger
        for record, offset in zip(failed, failed_offsets, strict=True):
            reservation = self._reserved.pop((record.topic, record.partition, record.offset), None)
            if reservation is not None:
                ledger.confirm(reservation, offset)
        for item, offset in zip(self.parked, parked_offsets, strict=True):
            ledger.confirm(item.reservation, offset)
        self.parked.clear()

    def finish(self, records: Sequence[SourceRecord]) -> None:
        """The batch is settled: its retry-tier records are no longer outstanding there."""
        ledger = self.ordering.ledger
        for record in records:
            stage = self.ordering.stage(record)
            if stage > 0:
                ledger.discharge(record.partition, record.key, stage, record.offset)
        outstanding_records.set(len(ledger))

    def abandon(self) -> None:
        """The batch was abandoned (cancelled): drop the reservations never confirmed. Its
        records stay outstanding: they will be delivered again."""
        ledger = self.ordering.ledger
        for reservation in self._reserved.values():
            ledger.cancel(reservation)
        for item in self.parked:
            ledger.cancel(item.reservation)
        self._reserved.clear()
        self.parked.clear()
