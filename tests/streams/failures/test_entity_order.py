"""The entity-ordering ledger (pure): the parking rule, identity by offset, rebuilds, and a
model of workers' agents interleaving at random that must keep every entity's order."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.failures.entity_order import EntityLedger, Reservation, Scanned

K = b"acct-1"


def _put(ledger: EntityLedger, tier: int, offset: int, due: int = 0, key: bytes = K) -> None:
    ledger.add(Scanned(tier, 0, offset, key, due))


def test_park_into_the_lowest_tier_above_the_stage() -> None:
    ledger = EntityLedger()
    _put(ledger, 3, 10)  # v1, the oldest, furthest along
    _put(ledger, 2, 20)  # v2
    assert ledger.park_tier(0, K, 0) == 2  # a new event goes behind v2, not v1
    assert ledger.park_tier(0, K, 1) == 2
    assert ledger.park_tier(0, K, 2) == 3  # v2 itself, when due, goes behind v1
    assert ledger.park_tier(0, K, 3) is None  # v1 is the head: process it
    assert ledger.park_tier(0, b"other", 0) is None
    assert ledger.park_tier(1, K, 0) is None  # another partition, another entity
    assert ledger.park_tier(0, None, 0) is None  # no key, nothing to order by


def test_discharge_is_by_offset_and_idempotent() -> None:
    ledger = EntityLedger()
    _put(ledger, 1, 5)
    _put(ledger, 1, 5)  # seen twice (rescan): still one record
    _put(ledger, 1, 6)
    assert ledger.outstanding(0, K) == 2
    ledger.discharge(0, K, 1, 5)
    ledger.discharge(0, K, 1, 5)  # redelivered: no double count
    assert ledger.outstanding(0, K) == 1
    ledger.discharge(0, K, 1, 6)
    assert ledger.outstanding(0, K) == 0 and ledger.entities == 0  # empty entries removed
    _put(ledger, 1, 6)  # a rescan does not resurrect a record this worker processed
    assert ledger.outstanding(0, K) == 0


def test_reservations_become_offsets_and_keep_the_latest_due() -> None:
    ledger = EntityLedger()
    first = ledger.reserve(0, K, 1)
    assert ledger.park_tier(0, K, 0) == 1  # visible before the broker acks it
    ledger.set_due(first, 5_000)
    second = ledger.reserve(0, K, 1)
    ledger.set_due(second, 4_000)
    assert ledger.last_due_ms(0, K, 1) == 5_000  # never earlier than the entity's earlier copy
    ledger.confirm(first, 40)
    ledger.confirm(second, None)  # the broker did not say where: discharged by the next one
    assert ledger.outstanding(0, K) == 2
    ledger.discharge(0, K, 1, 40)
    ledger.discharge(0, K, 1, 41)
    assert ledger.outstanding(0, K) == 0
    third = ledger.reserve(0, K, 2)
    ledger.cancel(third)  # abandoned batch
    assert ledger.outstanding(0, K) == 0


def test_reset_keeps_reservations_and_retain_drops_revoked_partitions() -> None:
    ledger = EntityLedger()
    _put(ledger, 1, 1)
    pending = ledger.reserve(0, K, 2)
    ledger.add(Scanned(1, 3, 7, b"x", 0))
    ledger.reset([0])
    assert ledger.outstanding(0, K) == 1  # only the copy in flight
    ledger.confirm(pending, 9)
    assert ledger.park_tier(0, K, 0) == 2
    ledger.retain([0])
    assert ledger.partitions() == {0}
    ledger.confirm(Reservation(3, b"x", 1, 999), 3)  # confirm for a revoked partition: ignored
    assert ledger.partitions() == {0}


# --- a model: agents of one worker interleaving at random ------------------------------------


@dataclass
class _Copy:
    entity: int
    version: int
    tier: int
    offset: int


@dataclass
class _World:
    """Main topic (stage 0) and ``tiers`` retry tiers, each a FIFO (a tier processes its
    records in due order, and an entity's copies never have decreasing due times); each
    stage has at most one record in flight (one agent, one batch at a time)."""

    tiers: int
    ledger: EntityLedger = field(default_factory=EntityLedger)
    queues: dict[int, deque[_Copy]] = field(default_factory=dict)
    in_flight: dict[int, tuple[_Copy, bool]] = field(default_factory=dict)  # stage -> (copy, park)
    next_offset: dict[int, int] = field(default_factory=dict)
    settled: dict[int, list[int]] = field(default_factory=dict)  # entity -> versions, in order

    def put(self, tier: int, entity: int, version: int, reservation: Reservation | None) -> None:
        offset = self.next_offset.get(tier, 0)
        self.next_offset[tier] = offset + 1
        self.queues.setdefault(tier, deque()).append(_Copy(entity, version, tier, offset))
        if reservation is not None:
            self.ledger.confirm(reservation, offset)

    def start(self, stage: int) -> bool:
        queue = self.queues.get(stage)
        if stage in self.in_flight or not queue:
            return False
        copy = queue.popleft()
        tier = self.ledger.park_tier(0, _key(copy.entity), stage)
        if tier is not None:  # parked: reserved now, produced when the batch finishes
            reservation = self.ledger.reserve(0, _key(copy.entity), tier)
            self.in_flight[stage] = (copy, True)
            self._pending[stage] = (tier, reservation)
        else:
            self.in_flight[stage] = (copy, False)
        return True

    def finish(self, stage: int, fails: bool) -> bool:
        if stage not in self.in_flight:
            return False
        copy, parked = self.in_flight.pop(stage)
        key = _key(copy.entity)
        if parked:
            tier, reservation = self._pending.pop(stage)
            self.put(tier, copy.entity, copy.version, reservation)
        elif fails and stage < self.tiers:
            reservation = self.ledger.reserve(0, key, stage + 1)
            self.put(stage + 1, copy.entity, copy.version, reservation)
        else:  # applied, or dead-lettered after the last tier: final, in either case
            self.settled.setdefault(copy.entity, []).append(copy.version)
        if stage > 0:
            self.ledger.discharge(0, key, stage, copy.offset)
        return True

    def __post_init__(self) -> None:
        self._pending: dict[int, tuple[int, Reservation]] = {}


def _key(entity: int) -> bytes:
    return f"e{entity}".encode()


@settings(max_examples=300, deadline=None)
@given(
    tiers=st.integers(1, 3),
    events=st.lists(st.integers(0, 1), min_size=1, max_size=12),
    steps=st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), max_size=200),
)
def test_any_interleaving_settles_each_entity_in_event_order(
    tiers: int, events: list[int], steps: list[tuple[int, bool, bool]]
) -> None:
    world = _World(tiers)
    versions: dict[int, int] = {}
    for entity in events:  # the main topic, in publish order
        versions[entity] = versions.get(entity, 0) + 1
        world.put(0, entity, versions[entity], None)
    for stage, start, fails in steps:
        stage = min(stage, tiers)
        if start:
            world.start(stage)
        else:
            world.finish(stage, fails)
    for _ in range(10_000):  # drain: finish everything, failures allowed no more
        moved = any(world.finish(s, False) for s in range(tiers + 1))
        moved = any(world.start(s) for s in range(tiers, -1, -1)) or moved
        if not moved:
            break
    assert not world.in_flight and not any(world.queues.values())
    for entity, settled in world.settled.items():
        assert settled == list(range(1, versions[entity] + 1)), (entity, settled)
    assert len(world.ledger) == 0 and world.ledger.entities == 0  # bounded: nothing left


def test_a_follower_overtaken_by_its_head_still_goes_behind_it() -> None:
    """v1 reaches tier 3 while v2 (parked behind it) is still in tier 2, then v3 arrives:
    v3 must go into tier 2 (behind v2), not tier 3 (where it would overtake v2)."""
    world = _World(3)
    world.put(0, 0, 1, None)
    world.start(0)
    world.finish(0, fails=True)  # v1 -> tier 1
    world.put(0, 0, 2, None)
    world.start(0)
    world.finish(0, fails=False)  # v2 parked into tier 1
    world.start(1)
    world.finish(1, fails=True)  # v1 -> tier 2
    world.start(2)  # v1 in flight in tier 2 ...
    world.start(1)
    world.finish(1, fails=False)  # ... v2 parked into tier 2
    world.finish(2, fails=True)  # v1 -> tier 3
    world.put(0, 0, 3, None)
    world.start(0)
    assert world.ledger.park_tier(0, _key(0), 0) == 2
    world.finish(0, fails=False)
    for _ in range(20):
        for stage in (3, 2, 1, 0):
            world.start(stage)
            world.finish(stage, fails=False)
    assert world.settled == {0: [1, 2, 3]}
