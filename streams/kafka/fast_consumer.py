"""The fast path (``RECON_FAST_PATH=1``): fetched records go to the batch processor in bulk.

Faust delivers every fetched record one at a time: ``Consumer._drain_messages`` awaits
``wait_first(callback(message), suspend_flow.wait())`` per message (two new tasks each), then
the conductor decodes it into an event and queues it for the agent's stream, which buffers it
for ``take_events`` and acks it. Per event that machinery costs more than all of our own work
(docs/performance.md has the profile).

:class:`BulkConsumer` is a subclass of Faust's aiokafka consumer (installed through
:func:`use_fast_path`, which sets ``app.transport``) that changes only the drain loop. For a
topic registered with :func:`register_bulk_topic`, each fetched batch is turned straight into
:class:`~streams.failures.routing.SourceRecord` s and handed to the handler in chunks of
``batch_max``;
other topics (the retry tiers) keep Faust's per-message path unchanged. What stays Faust's:
the consumer group, assignment and rebalancing, pausing partitions, the commit machinery
(commit interval / every N acks, commits of acked offsets only, gap tracking), and shutdown.

Correctness rules kept from the per-message path:

* **Commit after apply.** A chunk's offsets are acked (Faust's ack bookkeeping, in bulk) only
  after the handler returned, i.e. after every record is settled; Faust commits acked offsets
  only. If the handler raises, nothing of the chunk is acked, the error propagates and the
  worker stops: the chunk is replayed by whoever consumes the partition next.
* **Flow control.** Before each chunk the loop checks that flow is active (Faust stops it when
  a rebalance starts), that the consumer generation is the one the records were fetched in,
  and that the partition is not paused (``pause_partitions``); otherwise that partition's
  remaining records are dropped unread and its fetch position is moved back to the first of
  them, so they are fetched again on resume. (Not Faust's ``perform_seek``: aiokafka leaves a
  partition without a committed offset where it is, which would skip them.) ``wait_empty``
  (called on rebalance and on stop) first waits for the chunk in flight, so revocation and
  shutdown commit only what was applied.
* **Read offsets and gaps**: records older than the partition's read offset are skipped, and
  holes in the offsets (transaction markers, compaction) are registered as gaps, exactly as
  the per-message loop does, so commits can move past them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from streams.failures.routing import SourceRecord

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[SourceRecord]], Awaitable[object]]

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
        self._bulk_in_flight = 0  # chunks handed to a handler and not yet settled
        self._bulk_idle = asyncio.Event()
        self._bulk_idle.set()

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
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)  # never starve the loop, even when fetches are instant
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # Flow stopped (a rebalance) while fetching: drop the fetch unread.
                    for tp, batch in records.items():
                        await self._rewind(tp, batch[0].offset)
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

    async def _rewind(self, tp: Any, offset: int) -> None:
        """Fetched records of ``tp`` from ``offset`` on are dropped unread: move the fetch
        position back to ``offset`` so they are fetched again.

        Not ``perform_seek``: aiokafka's ``seek_to_committed`` leaves a partition that has
        no committed offset yet where it is, which would skip the dropped records.
        """
        log.info("fast path: %s paused or flow stopped; re-fetching from offset %d", tp, offset)
        try:
            await self.seek(tp, offset)
        except Exception as exc:  # no longer assigned: its new owner starts from the commit
            log.info("fast path: not rewinding %s (%r)", tp, exc)

    async def _deliver(self, records: Mapping[Any, list[Any]], active: set[Any] | None) -> None:
        generation = self.app.consumer_generation_id
        bulk = self._bulk
        others: dict[Any, list[Any]] = {}
        partitions = []
        failed = asyncio.Event()  # one partition's handler raised: the others stop too
        for tp, batch in records.items():
            entry = bulk.get(tp.topic)
            if entry is None:
                others[tp] = batch
            else:
                partitions.append(
                    self._deliver_partition(tp, batch, *entry, active, generation, failed)
                )
        # Partitions run side by side (each in offset order), so one partition's records are
        # decoded while another's batch waits on the sink; the in-flight total stays bounded by
        # partitions x batch_max (and by the backpressure limiter, when the handler has one).
        # Other topics' records go to their streams meanwhile, not after the bulk batches.
        if others:
            partitions.append(self._deliver_per_message(others, active, generation))
        if len(partitions) == 1:
            await partitions[0]
        elif partitions:
            outcomes = await asyncio.gather(*partitions, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome  # once every other partition has settled its chunk in flight

    async def _deliver_partition(
        self,
        tp: Any,
        batch: Sequence[Any],
        handler: BatchHandler,
        batch_max: int,
        active: set[Any] | None,
        generation: int,
        failed: asyncio.Event,
    ) -> None:
        for start in range(0, len(batch), batch_max):
            if failed.is_set() or not self._may_deliver(tp, active, generation):
                await self._rewind(tp, batch[start].offset)  # the rest goes unread
                return
            try:
                await self._apply_chunk(tp, batch[start : start + batch_max], handler)
            except BaseException:
                failed.set()
                raise

    def _may_deliver(self, tp: Any, active: set[Any] | None, generation: int) -> bool:
        return (
            self.flow_active
            and not self.should_stop
            and self.app.consumer_generation_id == generation
            and tp not in self._paused_partitions  # paused (backpressure) since the fetch
            and (active is None or tp in active or tp in self._buffered_partitions)
        )

    async def _apply_chunk(self, tp: Any, chunk: Sequence[Any], handler: BatchHandler) -> None:
        read_offset = self._read_offset[tp]
        sources: list[SourceRecord] = []
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
        if not sources:
            return
        monitor = self.app.monitor
        if monitor is not None:  # keeps Faust's "stream is idle" detector informed
            monitor.stream_inbound_time[tp] = time.monotonic()
        self._bulk_in_flight += 1
        self._bulk_idle.clear()
        try:
            await handler(sources)  # returns once every record is settled (never on failure)
            if tp not in self.assignment():
                # Revoked meanwhile (wait_empty normally prevents that): its new owner
                # replays from the committed offset, and idempotent apply makes that harmless.
                log.info("fast path: %s revoked while applying; not acking it", tp)
                return
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
