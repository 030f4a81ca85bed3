"""One batch of consumed records: decode, apply through the domain, route every failure.

This is the only place the Kafka side calls the domain, through two small interfaces: the
codec (bytes -> event) and the ``Reconciler`` (a batch of events in, one outcome each out).

The contract with the caller (a Faust agent over ``stream.take_events``): ``process`` returns
only when every record of the batch is settled -- applied (durably, in the sink), a no-op,
or copied to a retry tier / the DLT *and acknowledged by the broker*. Faust acks the batch's
offsets after ``process`` returns, and commits only acked offsets. So a crash anywhere before
that replays the batch: at-least-once delivery + idempotent apply = effectively-once state.

``process`` never raises for a bad record (Faust would ack a record whose agent raised, and
it would be lost); only cancellation (shutdown, rebalance) escapes, leaving the batch unacked.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from processors.apply_rules import Outcome
from processors.codec import AvroCodec
from processors.errors import ConflictError, FailureKind
from processors.event import ReconEvent
from processors.reconciler import Reconciler
from streams.failpoints import Failpoints
from streams.failures.circuit import CircuitBreaker, CircuitState
from streams.failures.ordering import BatchOrder, EntityOrdering
from streams.failures.retry_budget import RetryBudget
from streams.failures.routing import ATTEMPT, Failure, OutgoingRecord, SourceRecord, classify, route
from streams.ops import metrics
from streams.topics import TopicNames

log = logging.getLogger(__name__)


class RecordSender(Protocol):
    """Produces one record; the returned awaitable resolves when the broker has acked it."""

    async def __call__(self, record: OutgoingRecord) -> Awaitable[object]: ...


class ApplyObserver(Protocol):
    """Runs each downstream apply call in the sink thread, timing it
    (streams/backpressure/signals.py)."""

    def run(
        self, reconcile: Callable[[list[ReconEvent]], list[Outcome]], events: list[ReconEvent]
    ) -> list[Outcome]: ...


@dataclass(frozen=True, slots=True)
class ProcessingPolicy:
    retry_delays: tuple[float, ...]
    retry_jitter: float
    inline_attempts: int
    inline_backoff_s: float
    inline_backoff_max_s: float = 1.0
    permanent_classes: frozenset[str] = frozenset()
    forward_backoff_max_s: float = 5.0


@dataclass(slots=True)
class BatchResult:
    """Counts per outcome for one batch: applied, duplicate, stale, retried, dead_lettered."""

    counts: Counter[str] = field(default_factory=Counter)


_CIRCUIT_CODES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def _now_ms() -> int:
    return int(time.time() * 1000)


class BatchProcessor:
    def __init__(
        self,
        *,
        reconciler: Reconciler,
        codec: AvroCodec,
        send: RecordSender,
        topics: TopicNames,
        policy: ProcessingPolicy,
        sink_executor: Executor,
        circuit: CircuitBreaker,
        budget: RetryBudget,
        clock_ms: Callable[[], int] = _now_ms,
        rng: random.Random | None = None,
        failpoints: Failpoints | None = None,
        ordering: EntityOrdering | None = None,
    ) -> None:
        self._failpoints = failpoints or Failpoints(None)
        self._ordering = ordering  # RECON_ENTITY_ORDERING (streams/failures/ordering.py)
        self._circuit = circuit
        self._budget = budget
        self._reconciler = reconciler
        self._codec = codec
        self._send = send
        self._topics = topics
        self._policy = policy
        self._executor = sink_executor
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()
        self.apply_observer: ApplyObserver | None = None  # the governor's latency signal

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        result = BatchResult()
        if not records:
            return result
        order = self._ordering.begin() if self._ordering is not None else None
        if order is not None:
            await order.ready(records)  # the ledger of these partitions is built
        metrics.batch_records.observe(len(records))
        metrics.in_flight_records.inc(len(records))
        self._budget.on_consumed(len(records), time.monotonic())
        try:
            failures: list[tuple[SourceRecord, Failure]] = []
            decoded: list[tuple[SourceRecord, ReconEvent]] = []
            # Metrics are updated once per batch and label, not per record: on the fast path
            # per-record Prometheus calls were a sixth of the worker's busy time.
            for topic, count in Counter(record.topic for record in records).items():
                metrics.records_consumed.labels(topic).inc(count)
            decode = self._codec.decode
            for record in records:
                try:
                    decoded.append((record, decode(record.value or b"")))
                except Exception as exc:  # the codec only raises ReconError; belt and braces
                    failures.append((record, classify(exc, self._policy.permanent_classes)))
            failures.extend(await self._apply(decoded, result, order))
            if decoded:
                self._failpoints.hit("after_apply")
            await self._forward(failures, result, order)
            if failures:
                self._failpoints.hit("after_forward")
            if order is not None:
                order.finish(records)
            self._observe_latency(records)
        except BaseException:
            if order is not None:
                order.abandon()
            raise
        finally:
            metrics.in_flight_records.dec(len(records))
        return result

    # --- apply -------------------------------------------------------------------------------

    async def _apply(
        self,
        decoded: list[tuple[SourceRecord, ReconEvent]],
        result: BatchResult,
        order: BatchOrder | None = None,
    ) -> list[tuple[SourceRecord, Failure]]:
        """Apply the decoded events; return the records that failed for good, with why.

        Transient failures are retried in place ``inline_attempts`` times, then the records
        go to their next retry tier -- unless the circuit is open (hold the batch until the
        downstream answers probes) or the retry budget is spent (hold and keep retrying in
        place). Holding means not returning: the batch stays unacked and Faust stops
        fetching once its buffer is full, which pauses consumption without losing anything.

        With entity ordering, records whose entity has an earlier record waiting in a retry
        tier are parked (``order.hold``) -- here, on every part a split applies, because an
        earlier part may just have sent a record of the same entity to a retry tier.
        """
        if order is not None:
            decoded = order.hold(decoded)
        if not decoded:
            return []
        failed_attempts = 0
        while True:
            await self._wait_for_circuit()
            limit = self._circuit.batch_limit()
            if limit is not None and len(decoded) > limit:
                # Half-open: probe with a trickle, then the rest (which re-checks the circuit).
                head = await self._apply(decoded[:limit], result, order)
                return head + await self._apply(decoded[limit:], result, order)
            try:
                outcomes = await self._reconcile([event for _, event in decoded])
            except Exception as exc:
                failure = classify(exc, self._policy.permanent_classes)
                if failure.kind is FailureKind.PERMANENT:
                    return await self._isolate_permanent(decoded, failure, result, order)
                was = self._circuit.state
                self._circuit.record(failed=True, now=time.monotonic())
                if self._circuit.state is CircuitState.OPEN and was is not CircuitState.OPEN:
                    metrics.circuit_opened.inc()
                    log.warning("downstream circuit opened: %s", failure.message[:200])
                failed_attempts += 1
                if self._circuit.state is not CircuitState.CLOSED:
                    log.debug(
                        "downstream circuit %s: holding %d records",
                        self._circuit.state,
                        len(decoded),
                    )
                    continue
                if failed_attempts < self._policy.inline_attempts:
                    await asyncio.sleep(self._backoff(failed_attempts))
                    continue
                retrying = sum(1 for record, _ in decoded if self._goes_to_retry_tier(record))
                if self._budget.try_spend(retrying, time.monotonic()):
                    if order is not None:
                        order.failing(record for record, _ in decoded)
                    return [(record, failure) for record, _ in decoded]
                metrics.retry_budget_holds.inc()
                log.debug("retry budget spent: holding %d records in place", len(decoded))
                await asyncio.sleep(self._backoff(failed_attempts))
                continue
            self._circuit.record(failed=False, now=time.monotonic())
            return self._settle(decoded, outcomes, result)

    async def _isolate_permanent(
        self,
        decoded: list[tuple[SourceRecord, ReconEvent]],
        failure: Failure,
        result: BatchResult,
        order: BatchOrder | None = None,
    ) -> list[tuple[SourceRecord, Failure]]:
        """A batch-wide permanent error may come from one record (a value the store rejects):
        apply one by one so only the culprit is dead-lettered."""
        if len(decoded) == 1:
            return [(decoded[0][0], failure)]
        failures: list[tuple[SourceRecord, Failure]] = []
        for pair in decoded:
            failures.extend(await self._apply([pair], result, order))
        return failures

    def _settle(
        self,
        decoded: list[tuple[SourceRecord, ReconEvent]],
        outcomes: list[Outcome],
        result: BatchResult,
    ) -> list[tuple[SourceRecord, Failure]]:
        """Count applied/no-op outcomes; conflicts become permanent failures."""
        failed: list[tuple[SourceRecord, Failure]] = []
        settled: Counter[tuple[str, str]] = Counter()
        for (record, event), outcome in zip(decoded, outcomes, strict=True):
            if outcome is Outcome.CONFLICT:
                conflict = ConflictError(
                    f"entity {event.entity_id!r} already has version {event.version} "
                    f"from another event (this event_id {event.event_id!r})"
                )
                failed.append((record, classify(conflict)))
                continue
            settled[record.topic, outcome.value] += 1
        for (topic, outcome_value), count in settled.items():
            result.counts[outcome_value] += count
            metrics.records_outcome.labels(topic, outcome_value, "").inc(count)
        return failed

    async def _reconcile(self, events: list[ReconEvent]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            if self.apply_observer is not None:
                return await loop.run_in_executor(
                    self._executor, self.apply_observer.run, self._reconciler.reconcile, events
                )
            return await loop.run_in_executor(self._executor, self._reconciler.reconcile, events)
        finally:
            metrics.apply_seconds.observe(time.perf_counter() - started)

    async def _wait_for_circuit(self) -> None:
        while not self._circuit.allows(time.monotonic()):
            metrics.circuit_state.set(_CIRCUIT_CODES[self._circuit.state])
            await asyncio.sleep(max(0.01, self._circuit.seconds_until_probe(time.monotonic())))
        metrics.circuit_state.set(_CIRCUIT_CODES[self._circuit.state])

    def _backoff(self, failed_attempts: int) -> float:
        backoff = self._policy.inline_backoff_s * 2.0 ** (failed_attempts - 1)
        return min(backoff, self._policy.inline_backoff_max_s)

    def _goes_to_retry_tier(self, record: SourceRecord) -> bool:
        return (record.int_header(ATTEMPT) or 0) < len(self._policy.retry_delays)

    # --- forward -----------------------------------------------------------------------------

    async def _forward(
        self,
        failures: list[tuple[SourceRecord, Failure]],
        result: BatchResult,
        order: BatchOrder | None = None,
    ) -> None:
        """Produce every retry/DLT copy and wait until the broker has acked all of them.

        Producing is retried until it succeeds: returning early would let Faust commit the
        source offsets of records whose copies do not exist. Parked copies (entity ordering)
        go the same way: they are not retries (no retry budget, no circuit failure), but
        their source offsets may not be committed before they exist either.
        """
        parked_records = [item.record for item in order.parked] if order is not None else []
        if not failures and not parked_records:
            return
        now = self._clock_ms()
        outgoing = [
            route(
                record,
                failure,
                topics=self._topics,
                delays=self._policy.retry_delays,
                jitter=self._policy.retry_jitter,
                now_ms=now,
                rng=self._rng,
            )
            for record, failure in failures
        ]
        parked: list[OutgoingRecord] = []
        if order is not None:
            # Due times that keep each entity's copies in event order within a tier.
            sources = [record for record, _ in failures]
            outgoing, parked = order.copies(list(zip(sources, outgoing, strict=True)), now)
        copies = [*outgoing, *parked]
        acks: list[object] = [None] * len(copies)
        pending = list(range(len(copies)))
        backoff = 0.1
        while pending:
            outcomes = await asyncio.gather(
                *(self._send_and_wait(copies[i]) for i in pending), return_exceptions=True
            )
            failed: list[int] = []
            for i, ack in zip(pending, outcomes, strict=True):
                if isinstance(ack, BaseException):
                    failed.append(i)
                else:
                    acks[i] = ack
            if failed:
                metrics.forward_failures.inc(len(failed))
                log.warning(
                    "could not produce %d retry/DLT copies (%s); retrying in %.1fs",
                    len(failed),
                    next(o for o in outcomes if isinstance(o, BaseException)),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._policy.forward_backoff_max_s)
            pending = failed
        if order is not None:
            offsets = [_acked_offset(ack) for ack in acks]
            split = len(outgoing)
            order.acked([record for record, _ in failures], offsets[:split], offsets[split:])
        self._count_parked(parked_records, parked, result)
        for (record, failure), copy in zip(failures, outgoing, strict=True):
            outcome = "dead_lettered" if copy.is_dead_letter else "retried"
            result.counts[outcome] += 1
            metrics.records_outcome.labels(record.topic, outcome, failure.reason).inc()
            level = logging.INFO if copy.is_dead_letter else logging.DEBUG
            log.log(
                level,
                "%s %s[%d]@%d -> %s (%s: %s)",
                outcome,
                record.topic,
                record.partition,
                record.offset,
                copy.topic,
                failure.reason,
                failure.message[:200],
            )

    def _count_parked(
        self, records: list[SourceRecord], copies: list[OutgoingRecord], result: BatchResult
    ) -> None:
        """Parked is not a final outcome (like retried): the copy settles later."""
        if not records:
            return
        result.counts["parked"] += len(records)
        for topic, count in Counter(record.topic for record in records).items():
            metrics.records_outcome.labels(topic, "parked", "entity_order").inc(count)
        for record, copy in zip(records, copies, strict=True):
            log.debug(
                "parked %s[%d]@%d -> %s behind earlier records of its entity",
                record.topic,
                record.partition,
                record.offset,
                copy.topic,
            )

    async def _send_and_wait(self, copy: OutgoingRecord) -> object:
        ack = await self._send(copy)
        return await ack

    def _observe_latency(self, records: Sequence[SourceRecord]) -> None:
        now = self._clock_ms()
        observe = metrics.end_to_end_seconds.observe
        for record in records:
            if record.timestamp_ms > 0:
                observe(max(0.0, (now - record.timestamp_ms) / 1000))


def _acked_offset(ack: object) -> int | None:
    """The offset a broker ack reports (aiokafka's ``RecordMetadata.offset``), if any."""
    offset = getattr(ack, "offset", None)
    return offset if isinstance(offset, int) and offset >= 0 else None
