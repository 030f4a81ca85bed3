"""Per-entity ordering through the retry tiers (``RECON_ENTITY_ORDERING``): the ledger.

Pure, no I/O. With the option on, once an entity has a record parked in a retry tier, its
later records are parked behind it, so an entity's events still apply in order.

The ledger knows, per (partition, key), which records of that entity are *outstanding* in
which retry tier: copies not yet fully processed there. A record is identified by its offset
in the tier's partition, so every update is idempotent: a record seen twice (a rescan after a
rebalance, a redelivery) can neither be counted twice nor discharged twice. A copy this worker
is producing and whose offset is not known yet is a *reservation*, replaced by its offset
once the broker acks it.

The rule for a record of entity E consumed at stage s (0 for a lane topic, n for retry tier
n): if E has outstanding records in any tier above s, park it into the *lowest* such tier t.
Why the lowest: records in higher tiers hold E's earlier events (a record only moves up), so
the order of E's outstanding records is "highest tier first, then each tier in offset order".
The new record goes after all of them that precede it, and the tail of the lowest tier above
s is exactly that place. E.g. v1 in tier 3, v2 in tier 2, v3 arrives at tier 1: v3 goes behind
v2 in tier 2; when v2 comes due it goes behind v1 in tier 3, and v3 follows it there.

Within one tier partition an entity's records are processed in offset order (a tier is one
agent, batches in order, ready records by due time and the due times of one entity's copies
never decrease), so a tier's own records never block each other.

Memory is bounded by the outstanding records: entries are removed when discharged, and the
short memory of discharged offsets (which keeps a rescan from resurrecting a record this
worker has already processed) is capped per tier partition.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

DISCHARGED_MEMORY = 10_000  # offsets remembered per tier partition (see EntityLedger.rebuild)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A copy this worker is producing into ``tier``; its offset is not known yet."""

    partition: int
    key: bytes
    tier: int
    rid: int


@dataclass(slots=True)
class _Tier:
    offsets: set[int] = field(default_factory=set)  # copies in the tier partition
    pending: set[int] = field(default_factory=set)  # reservation ids (offset not yet known)
    unknown: int = 0  # confirmed copies whose offset the broker did not report
    last_due_ms: int = 0

    @property
    def count(self) -> int:
        return len(self.offsets) + len(self.pending) + self.unknown


@dataclass(frozen=True, slots=True)
class Scanned:
    """One record found in a retry tier by the rebuild scan."""

    tier: int
    partition: int
    offset: int
    key: bytes | None
    due_ms: int


class _Discharged:
    """The last offsets discharged from one tier partition (bounded)."""

    def __init__(self, cap: int) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._cap = cap

    def add(self, offset: int) -> None:
        if offset in self._set:
            return
        self._order.append(offset)
        self._set.add(offset)
        if len(self._order) > self._cap:
            self._set.discard(self._order.popleft())

    def __contains__(self, offset: int) -> bool:
        return offset in self._set


class EntityLedger:
    """Outstanding parked/retried records per (partition, entity key) and tier."""

    def __init__(self, discharged_memory: int = DISCHARGED_MEMORY) -> None:
        self._entities: dict[tuple[int, bytes], dict[int, _Tier]] = {}
        self._discharged: dict[tuple[int, int], _Discharged] = {}  # (tier, partition)
        self._discharged_memory = discharged_memory
        self._rids = itertools.count(1)

    # --- queries -----------------------------------------------------------------------------

    def park_tier(self, partition: int, key: bytes | None, stage: int) -> int | None:
        """The tier a record of ``key`` consumed at ``stage`` must be parked into, or None
        (nothing of the entity is outstanding above ``stage``: process it)."""
        if key is None:
            return None  # no entity to order by
        tiers = self._entities.get((partition, key))
        if not tiers:
            return None
        above = [tier for tier in tiers if tier > stage]
        return min(above) if above else None

    def outstanding(self, partition: int, key: bytes) -> int:
        """How many records of the entity are outstanding, all tiers."""
        return sum(t.count for t in self._entities.get((partition, key), {}).values())

    def last_due_ms(self, partition: int, key: bytes, tier: int) -> int:
        """The latest due time of the entity's outstanding records in ``tier`` (0 if none)."""
        entry = self._entities.get((partition, key), {}).get(tier)
        return entry.last_due_ms if entry is not None else 0

    def partitions(self) -> set[int]:
        return {partition for partition, _ in self._entities}

    def __len__(self) -> int:
        """Outstanding records, all entities."""
        return sum(t.count for tiers in self._entities.values() for t in tiers.values())

    @property
    def entities(self) -> int:
        return len(self._entities)

    # --- updates -----------------------------------------------------------------------------

    def reserve(self, partition: int, key: bytes, tier: int) -> Reservation:
        """A copy of the entity is about to be produced into ``tier`` (park or retry)."""
        reservation = Reservation(partition, key, tier, next(self._rids))
        self._tier(partition, key, tier).pending.add(reservation.rid)
        return reservation

    def set_due(self, reservation: Reservation, due_ms: int) -> None:
        entry = self._entities.get((reservation.partition, reservation.key), {}).get(
            reservation.tier
        )
        if entry is not None:
            entry.last_due_ms = max(entry.last_due_ms, due_ms)

    def confirm(self, reservation: Reservation, offset: int | None) -> None:
        """The broker acked the copy at ``offset`` (None: it did not say where)."""
        tiers = self._entities.get((reservation.partition, reservation.key))
        entry = tiers.get(reservation.tier) if tiers else None
        if entry is None or reservation.rid not in entry.pending:
            return  # dropped meanwhile (partition revoked)
        entry.pending.discard(reservation.rid)
        if offset is None:
            entry.unknown += 1
        elif offset not in self._discharged_set(reservation.tier, reservation.partition):
            entry.offsets.add(offset)
        self._prune(reservation.partition, reservation.key, reservation.tier)

    def cancel(self, reservation: Reservation) -> None:
        """The copy will not be produced (the batch was abandoned)."""
        tiers = self._entities.get((reservation.partition, reservation.key))
        entry = tiers.get(reservation.tier) if tiers else None
        if entry is not None:
            entry.pending.discard(reservation.rid)
            self._prune(reservation.partition, reservation.key, reservation.tier)

    def discharge(self, partition: int, key: bytes | None, tier: int, offset: int) -> None:
        """The record at ``offset`` of ``tier`` has been processed: no longer outstanding."""
        self._discharged_set(tier, partition).add(offset)
        if key is None:
            return
        entry = self._entities.get((partition, key), {}).get(tier)
        if entry is None:
            return
        if offset in entry.offsets:
            entry.offsets.discard(offset)
        elif entry.unknown:
            entry.unknown -= 1  # fallback: a copy whose offset we never learnt
        self._prune(partition, key, tier)

    def add(self, record: Scanned) -> None:
        """A record found by the rebuild scan (skipped if this worker already processed it)."""
        if record.key is None or record.offset in self._discharged_set(
            record.tier, record.partition
        ):
            return
        entry = self._tier(record.partition, record.key, record.tier)
        entry.offsets.add(record.offset)
        entry.last_due_ms = max(entry.last_due_ms, record.due_ms)

    def reset(self, partitions: Iterable[int]) -> None:
        """Forget what is known of ``partitions`` before rescanning them.

        Reservations stay: they are this worker's own copies in flight, and their confirmation
        may come after the scan has read past them. Everything else comes back from the scan
        (offset identity makes re-adding what is still known harmless).
        """
        wanted = set(partitions)
        for (partition, key), tiers in list(self._entities.items()):
            if partition not in wanted:
                continue
            for tier, entry in list(tiers.items()):
                entry.offsets.clear()
                entry.unknown = 0
                if not entry.pending:
                    entry.last_due_ms = 0
                self._prune(partition, key, tier)

    def retain(self, partitions: Iterable[int]) -> None:
        """Drop every entry of the partitions not in ``partitions`` (revoked)."""
        kept = set(partitions)
        for entity in [e for e in self._entities if e[0] not in kept]:
            del self._entities[entity]
        for tp in [tp for tp in self._discharged if tp[1] not in kept]:
            del self._discharged[tp]

    # --- internals ---------------------------------------------------------------------------

    def _tier(self, partition: int, key: bytes, tier: int) -> _Tier:
        return self._entities.setdefault((partition, key), {}).setdefault(tier, _Tier())

    def _discharged_set(self, tier: int, partition: int) -> _Discharged:
        found = self._discharged.get((tier, partition))
        if found is None:
            found = self._discharged[(tier, partition)] = _Discharged(self._discharged_memory)
        return found

    def _prune(self, partition: int, key: bytes, tier: int) -> None:
        tiers = self._entities.get((partition, key))
        if tiers is None:
            return
        entry = tiers.get(tier)
        if entry is not None and entry.count == 0:
            del tiers[tier]
        if not tiers:
            del self._entities[(partition, key)]
