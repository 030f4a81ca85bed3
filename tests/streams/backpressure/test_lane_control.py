"""Enforcing decisions: in-flight permits, lanes, chunking, pausing partitions (no broker)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.backpressure.governor import Decision, GovernorState
from streams.backpressure.lane_control import InFlightLimiter, LaneProcessor, PartitionPauser
from streams.backpressure.lanes import ALL_LANES, Lane, lane_for_priority
from streams.failures.routing import ORIGINAL_TOPIC, SourceRecord
from streams.topics import TopicNames

TOPICS = TopicNames("t.events", ("t.events.retry.1", "t.events.retry.2"), "t.events.dlt")


def decision(
    limit: int = 100,
    batch: int = 50,
    lanes: frozenset[Lane] = ALL_LANES,
    reserve: int = 10,
    pacing: float = 0.0,
) -> Decision:
    return Decision(GovernorState.NORMAL, limit, batch, lanes, reserve, pacing)


def record(
    topic: str, offset: int, partition: int = 0, original: str | None = None
) -> SourceRecord:
    headers = ((ORIGINAL_TOPIC, original.encode()),) if original else ()
    return SourceRecord(topic, partition, offset, 1, b"k", b"v", headers)


def test_lanes_by_priority_and_topic() -> None:
    assert lane_for_priority("critical") is Lane.CRITICAL
    assert lane_for_priority("bulk") is Lane.BULK
    assert lane_for_priority("normal") is Lane.NORMAL
    assert lane_for_priority("whatever") is Lane.NORMAL
    assert TOPICS.critical == "t.events.critical" and TOPICS.bulk == "t.events.bulk"
    assert TOPICS.all[:3] == ("t.events", "t.events.critical", "t.events.bulk")
    assert [TOPICS.lane_of(t) for t in TOPICS.all] == [
        Lane.NORMAL,
        Lane.CRITICAL,
        Lane.BULK,
        None,
        None,
        None,
    ]
    assert TOPICS.retry_tier("t.events.bulk") == 0 and TOPICS.retry_tier("t.events.retry.2") == 2


# --- the limiter -----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    limit=st.integers(20, 300),
    reserve=st.integers(0, 19),
    batch=st.integers(1, 400),
    jobs=st.lists(
        st.tuples(st.sampled_from(list(Lane)), st.integers(1, 700), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    seed=st.integers(0, 1000),
)
def test_in_flight_never_exceeds_the_limit_and_everything_settles(
    limit: int, reserve: int, batch: int, jobs: list[tuple[Lane, int, bool]], seed: int
) -> None:
    rng = random.Random(seed)

    async def main() -> tuple[int, int, list[int]]:
        limiter = InFlightLimiter(decision(limit, batch, reserve=reserve))
        peak = 0
        non_critical_peak = 0
        in_use_by_lane: dict[Lane, int] = dict.fromkeys(Lane, 0)
        settled: list[int] = []

        async def process(lane: Lane, records: Sequence[SourceRecord]) -> None:
            nonlocal peak, non_critical_peak
            in_use_by_lane[lane] += len(records)
            peak = max(peak, limiter.in_use)
            non_critical_peak = max(
                non_critical_peak, in_use_by_lane[Lane.NORMAL] + in_use_by_lane[Lane.BULK]
            )
            await asyncio.sleep(rng.random() * 0.002)
            in_use_by_lane[lane] -= len(records)
            settled.append(len(records))

        async def job(lane: Lane, n: int, gated: bool) -> None:
            lanes = LaneProcessor(lambda recs: process(lane, recs), TOPICS, limiter)
            records = [record(TOPICS.lane_topic(lane), i) for i in range(n)]
            if gated:
                await lanes.process(lane, records)
            else:
                await lanes._chunked(lane, records, gated=False)

        await asyncio.wait_for(asyncio.gather(*(job(*j) for j in jobs)), 30)
        return peak, non_critical_peak, settled

    peak, non_critical_peak, settled = asyncio.run(main())
    assert peak <= limit
    assert non_critical_peak <= limit - reserve  # the critical reserve is kept free
    assert sum(settled) == sum(n for _, n, _ in jobs)
    assert max(settled) <= min(batch, limit)


def test_critical_goes_first_and_a_stopped_lane_waits() -> None:
    async def main() -> list[str]:
        limiter = InFlightLimiter(
            decision(limit=30, batch=30, reserve=5, lanes=frozenset({Lane.CRITICAL, Lane.NORMAL}))
        )
        order: list[str] = []
        first = await limiter.acquire(Lane.NORMAL, 25)  # the non-critical share, all of it
        assert first == 25

        async def take(lane: Lane, n: int, tag: str) -> None:
            granted = await limiter.acquire(lane, n)
            order.append(tag)
            await asyncio.sleep(0.01)
            limiter.release(granted)

        bulk = asyncio.create_task(take(Lane.BULK, 5, "bulk"))
        normal = asyncio.create_task(take(Lane.NORMAL, 10, "normal"))
        await asyncio.sleep(0.01)
        critical = asyncio.create_task(take(Lane.CRITICAL, 10, "critical"))
        await asyncio.sleep(0.01)
        assert order == []  # critical fits only its reserve (5) + nothing: waits too
        limiter.release(first)
        await asyncio.wait_for(asyncio.gather(normal, critical), 5)
        assert not bulk.done()  # bulk does not run
        limiter.update(decision(limit=30, batch=30, reserve=5))
        await asyncio.wait_for(bulk, 5)
        return order

    assert asyncio.run(main()) == ["critical", "normal", "bulk"]


def test_draining_admits_everything_and_retries_ignore_a_lane_stop() -> None:
    async def main() -> None:
        limiter = InFlightLimiter(decision(limit=20, batch=5, lanes=frozenset({Lane.CRITICAL})))
        # A stopped lane's retries still go (shared tiers must not block critical retries).
        assert await asyncio.wait_for(limiter.acquire(Lane.BULK, 50, gated=False), 1) == 5
        limiter.release(5)
        waiting = asyncio.create_task(limiter.acquire(Lane.BULK, 50))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        limiter.update(decision(limit=20, batch=5, lanes=frozenset({Lane.CRITICAL})), draining=True)
        assert await asyncio.wait_for(waiting, 1) == 50  # a rebalance: finish what is held
        limiter.release(50)
        limiter.update(None)
        assert await limiter.acquire(Lane.BULK, 10_000) == 10_000  # switched off: no bound

    asyncio.run(main())


def test_pacing_delays_non_critical_chunks_only() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        limiter = InFlightLimiter(decision(pacing=0.05))
        start = loop.time()
        limiter.release(await limiter.acquire(Lane.CRITICAL, 1))
        critical = loop.time() - start
        start = loop.time()
        limiter.release(await limiter.acquire(Lane.BULK, 1))
        return critical, loop.time() - start

    critical, bulk = asyncio.run(main())
    assert critical < 0.04 <= bulk


# --- processing by lane ----------------------------------------------------------------------


def test_batches_go_through_in_chunks_in_order_and_retries_by_original_lane() -> None:
    calls: list[list[tuple[str, int]]] = []

    async def process(records: Sequence[SourceRecord]) -> None:
        calls.append([(r.topic, r.offset) for r in records])

    async def main() -> LaneProcessor:
        lanes = LaneProcessor(process, TOPICS, InFlightLimiter(decision(batch=40)))
        await lanes.process(Lane.NORMAL, [record(TOPICS.main, i) for i in range(100)])
        retry = TOPICS.retries[0]
        await lanes.process_retry(
            [
                record(retry, 0, original=TOPICS.bulk),
                record(retry, 1, original=TOPICS.main),
                record(retry, 2, original=TOPICS.critical),
                record(retry, 3),  # no header: its own topic, normal
            ]
        )
        return lanes

    lanes = asyncio.run(main())
    assert [len(c) for c in calls[:3]] == [40, 40, 20]
    assert [o for c in calls[:3] for _, o in c] == list(range(100))
    assert calls[3:] == [
        [("t.events.retry.1", 2)],
        [("t.events.retry.1", 1), ("t.events.retry.1", 3)],
        [("t.events.retry.1", 0)],
    ]
    assert lanes.counters.processed == {Lane.NORMAL: 102, Lane.CRITICAL: 1, Lane.BULK: 1}
    assert lanes.counters.next_offsets[("t.events", 0)] == 100


# --- pausing partitions ----------------------------------------------------------------------


class TP(NamedTuple):
    topic: str
    partition: int


@dataclass
class FaustLikeConsumer:
    """The pause bookkeeping of Faust's Consumer (faust/transport/consumer.py): an active set
    the fetcher filters by, and a paused set; a rebalance pauses all, then resumes all."""

    assigned: set[TP] = field(default_factory=set)
    active: set[TP] = field(default_factory=set)
    paused: set[TP] = field(default_factory=set)

    def pause_partitions(self, tps: Iterable[Any]) -> None:
        tpset = set(tps)
        self.active -= tpset
        self.paused |= tpset

    def resume_partitions(self, tps: Iterable[Any]) -> None:
        tpset = set(tps)
        self.active |= tpset
        self.paused -= tpset

    def rebalance(self, assigned: set[TP]) -> None:
        self.assigned = set(assigned)
        self.paused &= assigned
        self.active = set(assigned) - self.paused
        self.pause_partitions(assigned)  # app._on_partitions_assigned

    def recovery_done(self) -> None:
        self.resume_partitions(self.assigned)  # Recovery._resume_streams


def apply(pauser: PartitionPauser, *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(pauser.apply(*args, **kwargs))


def tps(topics: Iterable[str], partitions: int = 2) -> set[TP]:
    return {TP(t, p) for t in topics for p in range(partitions)}


ALL_TPS = tps(TOPICS.all[:-1])  # lanes and retry tiers (the DLT is not consumed)


def test_stopped_lanes_are_paused_and_only_ours_are_resumed() -> None:
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS)
    change = apply(pauser, consumer, {Lane.CRITICAL, Lane.NORMAL}, ALL_TPS, rebalancing=False)
    assert change.paused == tps([TOPICS.bulk]) and consumer.paused == tps([TOPICS.bulk])
    change = apply(pauser, consumer, {Lane.CRITICAL}, ALL_TPS, rebalancing=False)
    assert consumer.paused == tps([TOPICS.bulk, TOPICS.main])
    assert change.paused == tps([TOPICS.main]) and not change.resumed
    consumer.pause_partitions({TP(TOPICS.retries[0], 0)})  # someone else's pause
    apply(pauser, consumer, ALL_LANES, ALL_TPS, rebalancing=False)
    assert consumer.paused == {TP(TOPICS.retries[0], 0)}  # not ours: left alone
    assert consumer.active == ALL_TPS - {TP(TOPICS.retries[0], 0)}


def test_pauses_are_reapplied_after_a_rebalance_only_while_warranted() -> None:
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS)
    stopped = {Lane.CRITICAL, Lane.NORMAL}
    apply(pauser, consumer, stopped, ALL_TPS, rebalancing=False)
    # A rebalance: we lose partition 1 of everything.
    mine = {tp for tp in ALL_TPS if tp.partition == 0}
    consumer.rebalance(mine)
    pauser.forget()
    assert apply(pauser, consumer, stopped, mine, rebalancing=True).paused == frozenset()
    assert apply(pauser, consumer, ALL_LANES, mine, rebalancing=False).resumed == frozenset()
    pauser.rebalance_complete()
    consumer.recovery_done()  # Faust resumes every assigned partition
    assert not consumer.paused
    apply(pauser, consumer, stopped, mine, rebalancing=False)
    assert consumer.paused == {TP(TOPICS.bulk, 0)}  # still warranted: paused again
    consumer.rebalance(ALL_TPS)
    pauser.forget()
    pauser.rebalance_complete()
    consumer.recovery_done()
    apply(pauser, consumer, ALL_LANES, ALL_TPS, rebalancing=False)  # no longer warranted
    assert not consumer.paused and consumer.active == ALL_TPS


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("decide"), st.sampled_from(["all", "no_bulk", "critical"])),
            st.tuples(st.just("rebalance"), st.sets(st.sampled_from(sorted(ALL_TPS)))),
            st.tuples(st.just("recovered"), st.just(None)),
            st.tuples(st.just("tick_in_rebalance"), st.sampled_from(["all", "no_bulk"])),
            st.tuples(st.just("buffer_drop"), st.sampled_from(sorted(ALL_TPS))),
        ),
        max_size=25,
    )
)
def test_nothing_is_ever_left_paused_by_mistake(steps: list[tuple[str, Any]]) -> None:
    """Whatever happened -- decisions, rebalances, Faust's own resumes -- once every lane
    runs again and a tick outside a rebalance ran, no partition is paused, and a stopped
    lane's partitions are paused after every such tick."""
    lanes_of = {
        "all": ALL_LANES,
        "no_bulk": frozenset({Lane.CRITICAL, Lane.NORMAL}),
        "critical": frozenset({Lane.CRITICAL}),
    }
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS)
    recovering = False  # Faust keeps every assigned partition paused until its recovery ends
    for kind, arg in steps:
        if kind == "decide":
            running = lanes_of[arg]
            apply(pauser, consumer, running, consumer.assigned, rebalancing=False)
            for tp in consumer.assigned:
                lane = TOPICS.lane_of(tp.topic)
                stopped = lane is not None and lane not in running
                assert (tp in consumer.paused) == (stopped or recovering), tp
                assert (tp in pauser.paused) == (stopped and not recovering), tp
        elif kind == "rebalance":
            consumer.rebalance(set(arg))
            pauser.forget()
            recovering = True
        elif kind == "recovered":
            pauser.rebalance_complete()  # Faust's signal, then its resume of everything
            consumer.recovery_done()
            recovering = False
        elif kind == "tick_in_rebalance":
            apply(pauser, consumer, lanes_of[arg], consumer.assigned, rebalancing=True)
        else:  # Faust's buffer flow control re-activating a partition
            if arg in consumer.assigned:
                consumer.active.add(arg)
    pauser.rebalance_complete()
    consumer.recovery_done()
    apply(pauser, consumer, ALL_LANES, consumer.assigned, rebalancing=False)
    assert not consumer.paused
    assert consumer.active == consumer.assigned
    assert not pauser.paused


def test_every_partition_is_rewound_before_it_resumes() -> None:
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS)
    events: list[tuple[str, TP]] = []

    async def rewind(tp: Any) -> None:
        assert tp in consumer.paused  # still paused while it is rewound
        events.append(("rewind", tp))

    apply(pauser, consumer, {Lane.CRITICAL}, ALL_TPS, rebalancing=False, rewind=rewind)
    assert events == []  # pausing needs no rewind
    change = apply(pauser, consumer, ALL_LANES, ALL_TPS, rebalancing=False, rewind=rewind)
    assert {tp for _, tp in events} == change.resumed == tps([TOPICS.main, TOPICS.bulk])
    assert not consumer.paused


def test_a_missing_rebalance_signal_does_not_block_pausing_for_ever() -> None:
    now = [0.0]
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS, clock=lambda: now[0])
    pauser.forget()
    assert not apply(pauser, consumer, {Lane.CRITICAL}, ALL_TPS, rebalancing=False).paused
    now[0] = PartitionPauser.SETTLE_TIMEOUT_S + 1
    assert apply(pauser, consumer, {Lane.CRITICAL}, ALL_TPS, rebalancing=False).paused


def test_release_resumes_all_of_ours() -> None:
    consumer = FaustLikeConsumer()
    consumer.rebalance(ALL_TPS)
    consumer.recovery_done()
    pauser = PartitionPauser(TOPICS)
    apply(pauser, consumer, {Lane.CRITICAL}, ALL_TPS, rebalancing=False)
    assert asyncio.run(pauser.release(consumer, ALL_TPS)) == tps([TOPICS.main, TOPICS.bulk])
    assert not consumer.paused


@pytest.mark.parametrize("lane", list(Lane))
def test_decision_caps(lane: Lane) -> None:
    d = decision(limit=100, batch=500, reserve=10)
    assert d.cap(lane) == (100 if lane is Lane.CRITICAL else 90)
    assert d.chunk(lane) == d.cap(lane)
    assert replace(d, batch_size=7).chunk(lane) == 7
