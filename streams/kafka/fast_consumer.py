"""The fast path (``RECON_FAST_PATH``, on by default): fetched records go to the batch
processor in bulk.

Faust delivers every fetched record one at a time: ``Consumer._drain_messages`` awaits
``wait_first(callback(message), suspend_flow.wait())`` per message (two new tasks each), then
the conductor decodes it into an event and queues it for the agent's stream, which buffers it
for ``take_events`` and acks it. Per event that machinery costs more than all of our own work
(docs/performance.md has the profile).

:class:`BulkConsumer` is a subclass of Faust's aiokafka consumer (installed through
:func:`use_fast_path`, which sets ``app.transport``) that changes only the drain loop. For a
topic registered with :func:`register_bulk_topic` (the main topic and the priority lanes),
each fetched batch goes into its partition's bounded feed (streams/kafka/partition_feed.py)
and the drain loop moves on; one task per topic takes batches of up to ``batch_max`` across
the topic's feeds, turns them into :class:`~streams.failures.routing.SourceRecord` s and
hands them to the handler. Other topics (the retry tiers) keep Faust's per-message path.
What stays Faust's: the consumer group, assignment and rebalancing, pausing partitions, the
commit machinery (commit interval / every N acks, commits of acked offsets only, gap
tracking), and shutdown.

Correctness rules kept from the per-message path:

* **Commit after apply.** A batch's offsets are acked (Faust's ack bookkeeping, in bulk) only
  after the handler returned, i.e. after every record is settled; Faust commits acked offsets
  only. If the handler raises, nothing of the batch is acked, the error propagates and the
  worker stops: the batch is replayed by whoever consumes the partitions next.
* **Flow control.** Before taking a partition's records the topic task checks that flow is
  active (Faust stops it when a rebalance starts), that the consumer generation is the one
  they were fetched in, and that the partition is not paused (``pause_partitions``);
  otherwise the partition's queued records are dropped unread and its fetch position is
  moved back to the first of them, so they are fetched again on resume. (Not Faust's
  ``perform_seek``: aiokafka leaves a partition without a committed offset where it is, which
  would skip them.) A fetch that returned before such a rewind is not queued after it (the
  feed's strict mode). A full feed leaves its partition out of the fetch. ``wait_empty``
  (called on rebalance and on stop) first waits for the batches in flight, so revocation and
  shutdown commit only what was applied.
* **Read offsets and gaps**: records older than the partition's read offset are skipped, and
  holes in the offsets (transaction markers, compaction) are registered as gaps, exactly as
  the per-message loop does, so commits can move past them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.failures.routing import SourceRecord
from streams.kafka.partition_feed import STALE, PartitionFeed

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[SourceRecord]], Awaitable[object]]


@runtime_checkable
class BulkSensor(Protocol):
    """A Faust sensor that also wants the records the fast path hands out, a chunk at a
    time (``offsets``: ascending, one partition)."""

    def on_records_in(self, tp: Any, offsets: Sequence[int]) -> None: ...


# A partition's feed holds at most this many chunks (of batch_max) before the partition is
# left out of the fetch; it is fetched again once less than one chunk is queued.
FEED_HOLD_CHUNKS = 4

# The Faust internals the bulk path relies on (faust-streaming 0.15.x); checked at start-up so
# an incompatible Faust fails loudly instead of committing wrongly.
_REQUIRED = (
    "_acked",
    "_acked_index",
    "_committed_offset",
    "_read_offset",
    "_n_acked",
    "_add_gap",
    "_wait_next_records",
    "_waiting_for_ack",
    "suspend_flow",
    "flow_active",
    "seek",
    "_paused_partitions",
)


class BulkConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a bulk drain loop for registered topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        missing = [name for name in _REQUIRED if not hasattr(self, name)]
        if missing:
            raise RuntimeError(
                f"RECON_FAST_PATH needs Faust consumer internals {missing}; this Faust "
                "version is not supported by the fast path (unset RECON_FAST_PATH)"
            )
        self._init_bulk_state()

    def _init_bulk_state(self) -> None:
        self._bulk_in_flight = 0  # chunks handed to a handler and not yet settled
        self._bulk_idle = asyncio.Event()
        self._bulk_idle.set()
        self._bulk_failure: BaseException | None = None
        self._feeds: dict[Any, PartitionFeed] = {}
        self._feed_tasks: dict[Any, asyncio.Task[None]] = {}
        self._feed_wake: dict[Any, asyncio.Event] = {}
        self._held: set[Any] = set()  # partitions left out of the fetch: their feed is full
        self._fetch_wake = asyncio.Event()  # a held partition was released

    # --- registration ----------------------------------------------------------------------

    @property
    def _bulk(self) -> Mapping[str, tuple[BatchHandler, int]]:
        return cast(Mapping[str, tuple[BatchHandler, int]], getattr(self.app, "_recon_bulk", {}))

    # --- drain loop ------------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                if self._bulk_failure is not None:
                    raise self._bulk_failure  # a partition's handler raised: stop the worker
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)  # never starve the loop, even when fetches are instant
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # Flow stopped (a rebalance) while fetching: drop the fetch unread.
                    for tp, batch in records.items():
                        await self._rewind(tp, self._feed(tp).rewind(fetched_from=batch[0].offset))
                    continue
                await self._deliver(records, active)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("broker stopped the consumer; shutting down")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self._stop_feeds()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[Any] | None]:
        """Faust's fetch, leaving out partitions whose feed is full (held)."""
        held = self._held
        if not held:
            return cast(tuple[Any, set[Any] | None], await super()._wait_next_records(timeout))
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
        active = set(self._get_active_partitions()) - held
        if not active:
            self._fetch_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fetch_wake.wait(), timeout)
            return {}, active
        # Short waits while a partition is held, so it is fetched again soon after its feed
        # drains (a fetch in progress only returns when one of *these* partitions has data).
        records = await self._getmany(active_partitions=active, timeout=min(timeout, 0.05))
        return records, active

    async def _rewind(self, tp: Any, offset: int | None) -> None:
        """Fetched records of ``tp`` from ``offset`` on were dropped unread: move the fetch
        position back to ``offset`` so they are fetched again.

        Not ``perform_seek``: aiokafka's ``seek_to_committed`` leaves a partition that has
        no committed offset yet where it is, which would skip the dropped records.
        """
        if offset is None:
            return
        log.info("fast path: %s paused or flow stopped; re-fetching from offset %d", tp, offset)
        try:
            await self.seek(tp, offset)
        except Exception as exc:  # no longer assigned: its new owner starts from the commit
            log.info("fast path: not rewinding %s (%r)", tp, exc)
            self._feed(tp).reset()

    async def _deliver(self, records: Mapping[Any, list[Any]], active: set[Any] | None) -> None:
        """Hand each registered partition's records to its feed (never waiting on a sink);
        deliver the other topics' records through Faust's per-message path."""
        generation = self.app.consumer_generation_id
        bulk = self._bulk
        others: dict[Any, list[Any]] = {}
        for tp, batch in records.items():
            entry = bulk.get(tp.topic)
            if entry is None:
                others[tp] = batch
                continue
            feed = self._feed(tp)
            if not self._may_deliver(tp, active, generation):
                await self._rewind(tp, feed.rewind(fetched_from=batch[0].offset))  # goes unread
                continue
            if feed.offer(batch, generation) == STALE:
                await self._rewind(tp, feed.next_offset)
                continue
            if feed.full:
                self._held.add(tp)
            self._start_feed_task(tp, *entry)
        if others:
            await self._deliver_per_message(others, active, generation)

    # --- feeds and topic tasks -------------------------------------------------------------
    #
    # Each registered partition's records wait in a bounded PartitionFeed; one task per
    # registered topic (a lane) takes them out in batches of up to batch_max across its
    # partitions (round robin, each partition in offset order) and applies them. So the
    # drain loop never waits on the sink: while the bulk lane's batch waits on a slow
    # downstream (or on the backpressure limiter), the critical lane's task keeps applying
    # what the drain loop keeps fetching. One batch per lane at a time, as with Faust's
    # agents: a batch per partition would multiply the sink calls, and under a latency spike
    # each call costs the spike. A full feed holds its partition (left out of the fetch)
    # until the task has drained it below `release_at`.

    def _feed(self, tp: Any) -> PartitionFeed:
        feed = self._feeds.get(tp)
        if feed is None:
            batch_max = self._bulk.get(tp.topic, (None, 1))[1]
            feed = PartitionFeed(hold_at=FEED_HOLD_CHUNKS * batch_max, release_at=batch_max)
            self._feeds[tp] = feed
        return feed

    def _start_feed_task(self, tp: Any, handler: BatchHandler, batch_max: int) -> None:
        topic = tp.topic
        wake = self._feed_wake.setdefault(topic, asyncio.Event())
        wake.set()
        task = self._feed_tasks.get(topic)
        if task is None or task.done():
            self._feed_tasks[topic] = asyncio.get_running_loop().create_task(
                self._run_topic(topic, handler, batch_max, wake), name=f"recon-feed-{topic}"
            )

    async def _run_topic(
        self, topic: str, handler: BatchHandler, batch_max: int, wake: asyncio.Event
    ) -> None:
        turn = 0  # round robin: which partition is served first
        while True:
            feeds = self._topic_feeds(topic)
            turn = (turn + 1) % max(1, len(feeds))
            parts = await self._take_batch(feeds[turn:] + feeds[:turn], batch_max)
            if not parts:
                wake.clear()
                if not any(len(feed) for _, feed in feeds):
                    await wake.wait()
                continue
            try:
                await self._apply_batch(parts, handler)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # Nothing of the batch was acked. Stop every lane after its batch in flight
                # and let the drain loop raise it: the worker stops, and the batch is
                # replayed from the committed offsets by whoever consumes them next.
                log.error("fast path: handler failed on %s: %r", topic, exc)
                if self._bulk_failure is None:
                    self._bulk_failure = exc
                taken = {tp: chunk[0].offset for tp, chunk in parts}
                for tp, feed in self._topic_feeds(topic):
                    await self._rewind(tp, feed.rewind(taken_from=taken.get(tp)))
                    self._release(tp)
                for other in self._feed_wake.values():
                    other.set()
                self._fetch_wake.set()
                return

    def _topic_feeds(self, topic: str) -> list[tuple[Any, PartitionFeed]]:
        return [(tp, feed) for tp, feed in self._feeds.items() if tp.topic == topic]

    async def _take_batch(
        self, feeds: Sequence[tuple[Any, PartitionFeed]], batch_max: int
    ) -> list[tuple[Any, list[Any]]]:
        """Up to ``batch_max`` records from ``feeds``, each partition's in offset order;
        partitions that may not be delivered now are dropped and rewound instead."""
        parts: list[tuple[Any, list[Any]]] = []
        room = batch_max
        assignment = self.assignment()
        for tp, feed in feeds:
            if not feed:
                self._release(tp)
                continue
            generation = feed.generation
            if generation != self.app.consumer_generation_id or tp not in assignment:
                feed.reset()  # a rebalance: Faust positions the partition at its commit
                self._release(tp)
                continue
            if self._bulk_failure is not None or not self._may_deliver(tp, None, generation):
                await self._rewind(tp, feed.rewind())
                self._release(tp)
                continue
            if room <= 0:
                continue
            chunk = feed.take(room)
            room -= len(chunk)
            if feed.drained:
                self._release(tp)
            parts.append((tp, chunk))
        return parts

    def _release(self, tp: Any) -> None:
        if tp in self._held:
            self._held.discard(tp)
            self._fetch_wake.set()

    def _stop_feeds(self) -> None:
        for task in self._feed_tasks.values():
            task.cancel()
        self._feed_tasks.clear()
        for feed in self._feeds.values():
            feed.reset()
        self._held.clear()

    def _may_deliver(self, tp: Any, active: set[Any] | None, generation: int) -> bool:
        return (
            self.flow_active
            and not self.should_stop
            and self.app.consumer_generation_id == generation
            and tp not in self._paused_partitions  # paused (backpressure) since the fetch
            and (active is None or tp in active or tp in self._buffered_partitions)
        )

    async def _apply_batch(
        self, parts: Sequence[tuple[Any, Sequence[Any]]], handler: BatchHandler
    ) -> None:
        """Hand the records of ``parts`` (per partition, in offset order) to ``handler`` as
        one batch; once it returned (every record settled), ack them partition by partition.
        """
        sources: list[SourceRecord] = []
        delivered: list[tuple[Any, list[int], list[tuple[int, int]]]] = []
        monitor = self.app.monitor
        sensors = self._bulk_sensors()
        for tp, chunk in parts:
            read_offset = self._read_offset[tp]
            offsets: list[int] = []
            gaps: list[tuple[int, int]] = []
            previous = read_offset
            for record in chunk:
                offset = record.offset
                if read_offset is not None and offset < read_offset:
                    continue  # already delivered (re-fetched after a seek)
                if previous is not None and offset - previous > 1 and read_offset:
                    gaps.append((previous + 1, offset))
                previous = offset
                offsets.append(offset)
                headers = record.headers
                sources.append(
                    SourceRecord(
                        topic=record.topic,
                        partition=record.partition,
                        offset=offset,
                        timestamp_ms=record.timestamp or 0,
                        key=record.key,
                        value=record.value,
                        headers=tuple((k, bytes(v or b"")) for k, v in headers) if headers else (),
                    )
                )
            if not offsets:
                continue
            delivered.append((tp, offsets, gaps))
            if monitor is not None:  # keeps Faust's "stream is idle" detector informed
                monitor.stream_inbound_time[tp] = time.monotonic()
            for sensor in sensors:
                sensor.on_records_in(tp, offsets)
        if not sources:
            return
        self._bulk_in_flight += 1
        self._bulk_idle.clear()
        try:
            await handler(sources)  # returns once every record is settled (never on failure)
            assignment = self.assignment()
            for tp, offsets, gaps in delivered:
                if tp not in assignment:
                    # Revoked meanwhile (wait_empty normally prevents that): its new owner
                    # replays from the committed offset; idempotent apply makes that harmless.
                    log.info("fast path: %s revoked while applying; not acking it", tp)
                    continue
                for begin, end in gaps:
                    await self._add_gap(tp, begin, end)
                self._ack_offsets(tp, offsets)
                self._read_offset[tp] = offsets[-1]
        finally:
            self._bulk_in_flight -= 1
            if not self._bulk_in_flight:
                self._bulk_idle.set()
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    def _bulk_sensors(self) -> list[BulkSensor]:
        """The app's sensors that count records handed out in bulk (Faust's per-message
        ``on_message_in`` is not called on this path)."""
        sensors = getattr(self.app, "sensors", ())
        return [s for s in sensors if isinstance(s, BulkSensor)]

    def _ack_offsets(self, tp: Any, offsets: Iterable[int]) -> None:
        """Faust's ``ack`` bookkeeping for many offsets of one partition at once."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(fresh)
            self._acked[tp].extend(fresh)
            self._n_acked += len(fresh)
        notify(self._waiting_for_ack)

    async def _deliver_per_message(
        self, records: Mapping[Any, list[Any]], active: set[Any] | None, generation: int
    ) -> None:
        """Faust's own per-message delivery, for topics not registered for bulk."""
        callback = self.callback
        to_message = self._to_message
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        dropped: set[Any] = set()
        for tp, record in self.scheduler.iterate(records):
            if tp in dropped:
                continue
            if not self._may_deliver(tp, active, generation):
                dropped.add(tp)
                await self._rewind(tp, record.offset)
                continue
            message = to_message(tp, record)
            offset = message.offset
            read_offset = self._read_offset[tp]
            if read_offset is not None and offset < read_offset:
                continue
            if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, read_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            await self.wait_first(callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = offset

    # --- rebalance and shutdown ------------------------------------------------------------

    async def wait_empty(self) -> None:
        """Wait for the bulk chunks in flight (if any), then for Faust's own unacked events."""
        while not self._bulk_idle.is_set() and not self.should_stop:
            try:
                await asyncio.wait_for(self._bulk_idle.wait(), timeout=1.0)
            except TimeoutError:
                log.info("waiting for the batch in flight before committing")
        await super().wait_empty()


class BulkTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`BulkConsumer` as its consumer."""

    Consumer = BulkConsumer


def use_fast_path(app: Any) -> None:
    """Make ``app`` consume through :class:`BulkConsumer`. Call before the app touches its
    transport (before defining topics or agents)."""
    app.transport = BulkTransport(app.conf.broker_consumer, app)
    app._recon_bulk = {}


def register_bulk_topic(app: Any, topic: str, handler: BatchHandler, batch_max: int) -> None:
    """Records of ``topic`` go to ``handler`` in chunks of at most ``batch_max`` (fast path
    only; the topic must still be subscribed, e.g. by an agent)."""
    if not hasattr(app, "_recon_bulk"):
        raise RuntimeError("register_bulk_topic needs use_fast_path(app) first")
    if batch_max < 1:
        raise ValueError("batch_max must be >= 1")
    app._recon_bulk[topic] = (handler, batch_max)
