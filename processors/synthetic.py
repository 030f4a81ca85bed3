"""Synthetic upstream load: realistic event streams with duplicates, reordering and poison.

Used by the demo, the tests and the benchmarks. The stream is deterministic for a seed and is
generated lazily with O(entities) state, so millions of records cost no memory.

What a stream contains, per record drawn:
- a new event for a random entity (versions increase per entity; a few are deletes);
- with ``reorder_rate``, a new event is held back and sent right after its successor, so the
  older version arrives second (stale);
- with ``duplicate_rate``, the last event sent for a random entity is re-sent unchanged;
- with ``poison_rate``, a poison record, rotating: ``undecodable`` garbage, an ``invalid`` event
  (Avro-encodable but failing validation) and a ``conflict`` (same entity and version as the
  entity's highest event so far, another event id). Keys are always entity ids.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final

from processors.codec import MAGIC, AvroCodec
from processors.event import Op, Priority, ReconEvent, Scalar

POISON_KINDS: Final = ("undecodable", "invalid", "conflict")
START_MS: Final = 1_795_000_000_000  # 2026-11-19T...Z: a fixed base keeps streams reproducible
_STATUSES: Final = ("open", "pending", "settled", "disputed", "closed")


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    count: int
    entities: int = 1000
    duplicate_rate: float = 0.05
    reorder_rate: float = 0.05
    poison_rate: float = 0.001
    priority_mix: tuple[float, float, float] = (0.05, 0.85, 0.10)  # critical, normal, bulk
    seed: int = 0
    delete_rate: float = 0.02
    source: str = "synthetic"

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.entities < 1:
            raise ValueError(f"entities must be >= 1, got {self.entities}")
        for name in ("duplicate_rate", "reorder_rate", "poison_rate", "delete_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if self.duplicate_rate + self.poison_rate > 1.0:
            raise ValueError("duplicate_rate + poison_rate must not exceed 1")
        if len(self.priority_mix) != 3 or min(self.priority_mix) < 0 or sum(self.priority_mix) <= 0:
            raise ValueError(f"priority_mix needs 3 non-negative weights, got {self.priority_mix}")


@dataclass(frozen=True, slots=True)
class SyntheticRecord:
    key: str
    value: bytes
    event: ReconEvent | None  # the event the bytes decode to; None for undecodable/invalid
    poison: str | None  # one of POISON_KINDS, or None for a good record


def entity_name(index: int) -> str:
    return f"acct-{index:06d}"


class _Stream:
    """The generator's state; one instance per ``generate`` call."""

    def __init__(self, spec: SyntheticSpec, codec: AvroCodec) -> None:
        self.spec = spec
        self.codec = codec
        self.rng = random.Random(spec.seed)
        self.next_version: dict[str, int] = {}
        # Priority is per entity, not per event: lanes are separate topics, and one entity's
        # events must stay in one lane to keep their order.
        self.priority_of: dict[str, Priority] = {}
        self.last_sent: dict[str, SyntheticRecord] = {}  # for duplicates
        self.top: dict[str, ReconEvent] = {}  # highest version sent, for conflicts
        self.sent_entities: list[str] = []
        self.ticks = 0
        self.poisons = 0

    def random_entity(self) -> str:
        return entity_name(self.rng.randrange(self.spec.entities))

    def new_event(self, entity: str) -> ReconEvent:
        rng = self.rng
        version = self.next_version.get(entity, 0) + 1
        self.next_version[entity] = version
        priority = self.priority_of.get(entity)
        if priority is None:
            priority = rng.choices(list(Priority), weights=self.spec.priority_mix)[0]
            self.priority_of[entity] = priority
        self.ticks += 1
        deleting = rng.random() < self.spec.delete_rate
        fields: dict[str, Scalar] = {}
        if not deleting:
            fields = {
                "balance": round(rng.uniform(-1000.0, 100000.0), 2),
                "status": rng.choice(_STATUSES),
                "seq": version,
                "flagged": rng.random() < 0.1,
                "note": None if rng.random() < 0.8 else f"note {self.ticks}",
            }
        return ReconEvent(
            event_id=f"{entity}:v{version}",
            entity_id=entity,
            version=version,
            op=Op.DELETE if deleting else Op.UPSERT,
            fields=fields,
            priority=priority,
            occurred_at_ms=START_MS + self.ticks * 10,
            source=self.spec.source,
        )

    def send(self, event: ReconEvent) -> SyntheticRecord:
        record = SyntheticRecord(event.entity_id, self.codec.encode(event), event, None)
        entity = event.entity_id
        if entity not in self.last_sent:
            self.sent_entities.append(entity)
        self.last_sent[entity] = record
        top = self.top.get(entity)
        if top is None or event.version > top.version:
            self.top[entity] = event
        return record

    def poison(self) -> SyntheticRecord:
        kind = POISON_KINDS[self.poisons % len(POISON_KINDS)]
        self.poisons += 1
        rng = self.rng
        if kind == "conflict" and self.sent_entities:
            base = self.top[rng.choice(self.sent_entities)]
            # Same entity and version as the highest event sent: applying it is a conflict.
            event = replace(
                base,
                event_id=f"{base.event_id}:conflict{self.poisons}",
                op=Op.UPSERT,
                fields={"conflicting": True, "poison": self.poisons},
            )
            return SyntheticRecord(base.entity_id, self.codec.encode(event), event, kind)
        entity = self.random_entity()
        if kind == "invalid":
            good = ReconEvent(
                event_id=f"{entity}:poison{self.poisons}",
                entity_id=entity,
                version=1,
                op=Op.UPSERT,
                fields={"poison": self.poisons},
                priority=self.priority_of.get(entity, Priority.NORMAL),
                occurred_at_ms=START_MS + self.ticks * 10,
                source=self.spec.source,
            )
            # Alternate two rule breaks; both encode fine and fail validation on decode.
            if self.poisons % 2:
                bad = replace(good, event_id=f"bad event {self.poisons}")
            else:
                bad = replace(good, version=-1)
            return SyntheticRecord(
                entity, self.codec.encode_with(bad, "current", check=False), None, kind
            )
        # Undecodable (also the fallback for a conflict before any event was sent). The first
        # byte is never the magic's, so the garbage can never decode by chance.
        garbage = bytes([rng.randrange(MAGIC[0])]) + rng.randbytes(rng.randrange(64))
        return SyntheticRecord(entity, garbage, None, "undecodable")


def generate(spec: SyntheticSpec, codec: AvroCodec) -> Iterator[SyntheticRecord]:
    """Exactly ``spec.count`` records, deterministic for ``spec.seed``."""
    stream = _Stream(spec, codec)
    rng = stream.rng
    held: dict[str, ReconEvent] = {}  # reordered events waiting for their successor
    emitted = 0
    while emitted < spec.count:
        remaining = spec.count - emitted
        if remaining <= len(held):
            # Out of room for successors: send what is held (it just arrives late, in order).
            for event in list(held.values())[:remaining]:
                yield stream.send(event)
            return
        draw = rng.random()
        if draw < spec.poison_rate:
            yield stream.poison()
            emitted += 1
            continue
        if draw < spec.poison_rate + spec.duplicate_rate and stream.sent_entities:
            yield stream.last_sent[rng.choice(stream.sent_entities)]
            emitted += 1
            continue
        entity = stream.random_entity()
        event = stream.new_event(entity)
        earlier = held.pop(entity, None)
        if earlier is not None:
            # remaining > len(held) held before the pop, so both records fit.
            yield stream.send(event)
            yield stream.send(earlier)
            emitted += 2
        elif rng.random() < spec.reorder_rate and remaining > len(held) + 2:
            held[entity] = event
        else:
            yield stream.send(event)
            emitted += 1
