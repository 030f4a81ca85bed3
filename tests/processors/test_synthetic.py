from __future__ import annotations

import itertools
from collections import Counter

import pytest

from processors.apply_rules import Outcome
from processors.codec import AvroCodec
from processors.errors import DecodeError, InvalidEvent
from processors.reference_model import ReferenceModel
from processors.synthetic import POISON_KINDS, SyntheticSpec, generate

CODEC = AvroCodec()


def records(**kwargs: object) -> list:  # type: ignore[type-arg]
    return list(generate(SyntheticSpec(**kwargs), CODEC))  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 50, 2000])
def test_exact_count(count: int) -> None:
    assert len(records(count=count, entities=5, reorder_rate=0.5)) == count


def test_deterministic_for_a_seed() -> None:
    assert records(count=500, seed=4) == records(count=500, seed=4)
    assert records(count=500, seed=4) != records(count=500, seed=5)


def test_streams_lazily() -> None:
    head = list(itertools.islice(generate(SyntheticSpec(10**12), CODEC), 10))
    assert len(head) == 10


def test_keys_are_entity_ids_and_events_decode_to_themselves() -> None:
    for record in records(count=3000, entities=50, poison_rate=0.05):
        assert record.key.startswith("acct-")
        if record.event is not None:
            assert record.key == record.event.entity_id
            assert CODEC.decode(record.value) == record.event


def test_poison_kinds_rotate_and_fail_as_labelled() -> None:
    poisons = [r for r in records(count=3000, entities=50, poison_rate=0.05) if r.poison]
    assert len(poisons) > 30
    assert [p.poison for p in poisons[:6]] == list(POISON_KINDS) * 2
    for poison in poisons:
        if poison.poison == "undecodable":
            assert poison.event is None
            with pytest.raises(DecodeError):
                CODEC.decode(poison.value)
        elif poison.poison == "invalid":
            assert poison.event is None
            with pytest.raises(InvalidEvent):
                CODEC.decode(poison.value)
        else:
            assert poison.event is not None and CODEC.decode(poison.value) == poison.event


@pytest.mark.parametrize("seed", range(5))
def test_reference_model_sees_every_kind(seed: int) -> None:
    spec = SyntheticSpec(5000, entities=100, poison_rate=0.02, delete_rate=0.2, seed=seed)
    model = ReferenceModel(CODEC)
    stream = list(generate(spec, CODEC))
    labels = [model.observe_record(r) for r in stream]
    kinds = Counter(r.poison for r in stream)
    assert model.total == len(stream) == 5000
    assert model.undecodable == kinds["undecodable"]
    assert model.invalid == kinds["invalid"]
    # Conflicts are built to really conflict: every conflict record is dead-lettered.
    assert model.conflict == kinds["conflict"]
    assert model.dead_lettered == sum(n for k, n in kinds.items() if k)
    assert model.duplicate > 0 and model.stale > 0 and model.applied > 0
    assert labels.count(Outcome.APPLIED.value) == model.applied
    # Every entity ends at its highest version, counting deletes as tombstones.
    top: dict[str, int] = {}
    for r in stream:
        if r.event is not None and r.poison is None:
            top[r.key] = max(top.get(r.key, -1), r.event.version)
    assert {k: row.version for k, row in model.rows.items()} == top
    assert any(row.deleted for row in model.rows.values())


def test_priority_is_fixed_per_entity_and_mixed_overall() -> None:
    seen: dict[str, set[str]] = {}
    for r in records(count=5000, entities=400):
        if r.event is not None:
            seen.setdefault(r.key, set()).add(r.event.priority.value)
    assert all(len(p) == 1 for p in seen.values())
    overall = Counter(next(iter(p)) for p in seen.values())
    assert set(overall) == {"critical", "normal", "bulk"}
    assert overall["normal"] > overall["bulk"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"count": -1},
        {"count": 1, "entities": 0},
        {"count": 1, "duplicate_rate": 1.5},
        {"count": 1, "duplicate_rate": 0.6, "poison_rate": 0.6},
        {"count": 1, "priority_mix": (0.0, 0.0, 0.0)},
    ],
)
def test_spec_is_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(**bad)  # type: ignore[arg-type]
