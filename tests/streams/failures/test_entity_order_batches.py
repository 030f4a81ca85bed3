"""Entity ordering inside ``BatchProcessor`` (no Kafka): parking, the split apply paths, due
times and the books. The Kafka side of it is in tests/streams/test_entity_order_end_to_end.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from processors.apply_rules import Outcome
from processors.codec import AvroCodec
from processors.errors import DownstreamUnavailable, InvalidEvent
from processors.event import EventLimits, ReconEvent
from streams.batch_processor import BatchProcessor, BatchResult, ProcessingPolicy
from streams.failures.circuit import CircuitBreaker, CircuitPolicy
from streams.failures.entity_order import Scanned
from streams.failures.ordering import EntityOrdering, copartitioning_problems
from streams.failures.retry_budget import RetryBudget, RetryBudgetPolicy
from streams.failures.routing import (
    ATTEMPT,
    DUE_MS,
    ORIGINAL_OFFSET,
    ORIGINAL_TOPIC,
    PARKED_BEHIND,
    OutgoingRecord,
    SourceRecord,
    headers_dict,
)
from streams.topics import TopicNames
from tests.processors.strategies import make_event
from tests.streams.inprocess import InlineExecutor

TOPICS = TopicNames("in.events", ("in.events.retry.1", "in.events.retry.2"), "in.events.dlt")
CODEC = AvroCodec(EventLimits())
NOW = 1_000_000


@dataclass
class OffsetSender:
    """Acks at once, with the offset the copy got in its topic (like aiokafka's metadata)."""

    sent: list[OutgoingRecord] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)

    async def __call__(self, record: OutgoingRecord) -> asyncio.Future[object]:
        self.sent.append(record)
        offset = self.offsets.get(record.topic, 100)
        self.offsets[record.topic] = offset + 1
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        ack.set_result(SimpleNamespace(offset=offset))
        return ack

    def to(self, topic: str) -> list[tuple[str, dict[str, str]]]:
        return [
            (CODEC.decode(r.value or b"").event_id, headers_dict(r.headers))
            for r in self.sent
            if r.topic == topic
        ]


@dataclass
class FlakyReconciler:
    """Fails transiently while a batch holds an event of ``flaky``, permanently while it holds
    one of ``poison``; records what it applied, in order."""

    flaky: set[str] = field(default_factory=set)
    poison: set[str] = field(default_factory=set)
    applied: list[str] = field(default_factory=list)

    def reconcile(self, events: list[ReconEvent]) -> list[Outcome]:
        ids = {e.event_id for e in events}
        if ids & self.poison:
            raise InvalidEvent("the store rejects a value")
        if ids & self.flaky:
            raise DownstreamUnavailable("down for these")
        self.applied.extend(e.event_id for e in events)
        return [Outcome.APPLIED] * len(events)


def _processor(
    reconciler: FlakyReconciler,
    sender: OffsetSender,
    ordering: EntityOrdering | None,
    jitter: float = 0.0,
) -> BatchProcessor:
    return BatchProcessor(
        reconciler=reconciler,  # type: ignore[arg-type]
        codec=CODEC,
        send=sender,
        topics=TOPICS,
        policy=ProcessingPolicy(
            retry_delays=(1.0, 2.0), retry_jitter=jitter, inline_attempts=1, inline_backoff_s=0.0
        ),
        sink_executor=InlineExecutor(),
        circuit=CircuitBreaker(CircuitPolicy(enabled=False)),
        budget=RetryBudget(RetryBudgetPolicy(enabled=False)),
        clock_ms=lambda: NOW,
        rng=random.Random(7),
        ordering=ordering,
    )


def _ordering(scanned: Sequence[Scanned] = ()) -> EntityOrdering:
    async def scan(partitions: Sequence[int]) -> list[Scanned]:
        return list(scanned)

    return EntityOrdering(TOPICS, scan, tiers=len(TOPICS.retries), clock_ms=lambda: NOW)


def _record(
    event: ReconEvent, offset: int, topic: str = TOPICS.main, **headers: str
) -> SourceRecord:
    return SourceRecord(
        topic,
        0,
        offset,
        0,
        event.entity_id.encode(),
        CODEC.encode(event),
        tuple((k, v.encode()) for k, v in headers.items()),
    )


def test_a_record_behind_one_sent_to_a_tier_by_an_earlier_part_of_its_batch_is_parked() -> None:
    """The one-by-one isolation path: a1 fails transiently in its own part; a2, in a later
    part of the same batch, must not be applied ahead of it."""
    a1, a2, b1 = make_event("a", 1), make_event("a", 2), make_event("b", 1)
    poison = make_event("x", 1)
    reconciler = FlakyReconciler(flaky={a1.event_id}, poison={poison.event_id})
    sender = OffsetSender()

    async def run() -> BatchResult:
        ordering = _ordering()
        ordering.on_assigned({0})
        processor = _processor(reconciler, sender, ordering)
        result = await processor.process(
            [_record(e, i) for i, e in enumerate([poison, a1, a2, b1])]
        )
        assert ordering.ledger.outstanding(0, b"a") == 2  # a1 retried, a2 parked behind it
        return result

    result = asyncio.run(run())
    assert reconciler.applied == [b1.event_id]
    retry1 = sender.to(TOPICS.retries[0])
    assert [event_id for event_id, _ in retry1] == [a1.event_id, a2.event_id]
    (_, retried), (_, parked) = retry1
    assert parked[ATTEMPT] == "1" and parked[PARKED_BEHIND] == "1"
    assert parked[ORIGINAL_TOPIC] == TOPICS.main and parked[ORIGINAL_OFFSET] == "2"
    assert int(parked[DUE_MS]) >= int(retried[DUE_MS])
    assert result.counts == {"dead_lettered": 1, "retried": 1, "parked": 1, "applied": 1}


def test_without_the_option_the_same_batch_applies_out_of_order() -> None:
    a1, a2 = make_event("a", 1), make_event("a", 2)
    poison = make_event("x", 1)
    reconciler = FlakyReconciler(flaky={a1.event_id}, poison={poison.event_id})
    processor = _processor(reconciler, OffsetSender(), None)
    result = asyncio.run(processor.process([_record(e, i) for i, e in enumerate([poison, a1, a2])]))
    assert reconciler.applied == [a2.event_id]  # a1 will come back from tier 1 as stale
    assert "parked" not in result.counts


def test_parked_behind_the_lowest_tier_then_released_in_order() -> None:
    a1, a2, a3 = make_event("a", 1), make_event("a", 2), make_event("a", 3)
    scanned = [Scanned(2, 0, 7, b"a", NOW + 5_000), Scanned(1, 0, 3, b"a", NOW + 800)]
    reconciler = FlakyReconciler()
    sender = OffsetSender()

    async def run() -> None:
        ordering = _ordering(scanned)
        ordering.on_assigned({0})
        processor = _processor(reconciler, sender, ordering)
        # a3 arrives on the main topic: behind a2 (tier 1), not a1 (tier 2).
        await processor.process([_record(a3, 50)])
        ((_, parked),) = sender.to(TOPICS.retries[0])
        assert parked[ATTEMPT] == "1" and int(parked[DUE_MS]) == NOW + 800
        assert parked[PARKED_BEHIND] == "2"
        # a2 comes due in tier 1: it goes behind a1 in tier 2 (due no earlier than a1).
        await processor.process([_record(a2, 3, TOPICS.retries[0], **{ATTEMPT: "1"})])
        ((_, moved),) = sender.to(TOPICS.retries[1])
        assert moved[ATTEMPT] == "2" and int(moved[DUE_MS]) == NOW + 5_000
        # a1 (the head) is processed; then the others follow, each behind the one before.
        await processor.process([_record(a1, 7, TOPICS.retries[1], **{ATTEMPT: "2"})])
        tier1_copy = sender.sent[0]
        await processor.process(
            [SourceRecord(TOPICS.retries[0], 0, 100, 0, b"a", tier1_copy.value, tier1_copy.headers)]
        )
        tier2_copies = [r for r in sender.sent if r.topic == TOPICS.retries[1]]
        assert len(tier2_copies) == 2  # a3 moved behind a2 in tier 2
        for offset, copy in zip((100, 101), tier2_copies, strict=True):
            await processor.process(
                [SourceRecord(TOPICS.retries[1], 0, offset, 0, b"a", copy.value, copy.headers)]
            )
        assert len(ordering.ledger) == 0

    asyncio.run(run())
    assert reconciler.applied == [a1.event_id, a2.event_id, a3.event_id]


def test_copies_of_one_entity_never_come_due_before_the_earlier_one() -> None:
    events = [make_event("a", v) for v in range(1, 9)]
    reconciler = FlakyReconciler(flaky={e.event_id for e in events})
    sender = OffsetSender()

    async def run() -> None:
        ordering = _ordering()
        ordering.on_assigned({0})
        await _processor(reconciler, sender, ordering, jitter=0.9).process(
            [_record(e, i) for i, e in enumerate(events)]
        )

    asyncio.run(run())
    dues = [int(h[DUE_MS]) for _, h in sender.to(TOPICS.retries[0])]
    assert len(dues) == 8 and dues == sorted(dues)


def test_batches_wait_until_the_ledger_is_rebuilt() -> None:
    gate = asyncio.Event

    async def run() -> list[str]:
        release = gate()
        scans: list[Sequence[int]] = []

        async def scan(partitions: Sequence[int]) -> list[Scanned]:
            scans.append(partitions)
            await release.wait()
            return [Scanned(1, 0, 4, b"a", NOW)]

        ordering = EntityOrdering(TOPICS, scan, tiers=2)
        ordering.on_assigned({0, 1})
        reconciler = FlakyReconciler()
        sender = OffsetSender()
        task = asyncio.ensure_future(
            _processor(reconciler, sender, ordering).process([_record(make_event("a", 2), 9)])
        )
        await asyncio.sleep(0.05)
        assert not task.done() and not sender.sent  # held: the scan has not answered
        release.set()
        await task
        assert scans == [[0, 1]]
        return [r.topic for r in sender.sent]

    assert asyncio.run(run()) == [TOPICS.retries[0]]  # parked behind what the scan found


def test_copartitioning_check() -> None:
    topics = ["m", "m.retry.1"]
    assert copartitioning_problems([("m", 0), ("m.retry.1", 0), ("other", 3)], topics) == ""
    problems = copartitioning_problems([("m", 0), ("m", 1), ("m.retry.1", 0)], topics)
    assert "m: [0, 1]" in problems and "m.retry.1: [0]" in problems
