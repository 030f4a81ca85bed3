from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.apply_rules import Outcome, StoredRow, apply, decide, fold, row_for
from processors.event import Op, ReconEvent
from tests.processors.strategies import field_maps, make_event

ROW = StoredRow("acct-1", 5, False, {"seq": 5}, "acct-1:v5", 100)


def test_no_row_applies() -> None:
    assert decide(None, make_event(version=0)) is Outcome.APPLIED


def test_higher_version_applies() -> None:
    outcome, row = apply(ROW, make_event(version=6, fields={"a": 1}), now_ms=200)
    assert outcome is Outcome.APPLIED
    assert row == StoredRow("acct-1", 6, False, {"a": 1}, "acct-1:v6", 200)


def test_same_event_again_is_duplicate() -> None:
    assert apply(ROW, make_event(version=5), now_ms=1) == (Outcome.DUPLICATE, None)


def test_same_version_other_event_id_is_conflict() -> None:
    assert apply(ROW, make_event(version=5, event_id="other"), now_ms=1) == (Outcome.CONFLICT, None)


def test_lower_version_is_stale() -> None:
    assert apply(ROW, make_event(version=4), now_ms=1) == (Outcome.STALE, None)
    # Stale wins over "same event id": an old event id at a lower version is still stale.
    assert decide(ROW, make_event(version=4, event_id="acct-1:v5")) is Outcome.STALE


def test_upsert_replaces_fields_wholesale() -> None:
    _, row = apply(ROW, make_event(version=6, fields={"only": "this"}), now_ms=1)
    assert row is not None and dict(row.fields) == {"only": "this"}


def test_delete_leaves_a_tombstone_that_keeps_its_version() -> None:
    outcome, tomb = apply(ROW, make_event(version=7, op=Op.DELETE, fields={"x": 1}), now_ms=9)
    assert outcome is Outcome.APPLIED
    assert tomb == StoredRow("acct-1", 7, True, {}, "acct-1:v7", 9)
    # An older upsert arriving after the delete stays stale; the same delete is a duplicate.
    assert decide(tomb, make_event(version=6)) is Outcome.STALE
    assert decide(tomb, make_event(version=7, op=Op.DELETE)) is Outcome.DUPLICATE
    # A newer upsert resurrects the entity.
    _, alive = apply(tomb, make_event(version=8), now_ms=10)
    assert alive is not None and not alive.deleted and alive.version == 8


def test_fold_counts_in_order() -> None:
    stream = [
        make_event(version=1),
        make_event(version=3),
        make_event(version=2),  # stale
        make_event(version=3),  # duplicate
        make_event(version=3, event_id="x"),  # conflict
        make_event("acct-2", 1),
    ]
    rows, counts = fold(stream)
    assert counts == {
        Outcome.APPLIED: 3,
        Outcome.STALE: 1,
        Outcome.DUPLICATE: 1,
        Outcome.CONFLICT: 1,
    }
    assert rows["acct-1"].version == 3 and rows["acct-1"].last_event_id == "acct-1:v3"
    assert set(rows) == {"acct-1", "acct-2"}


def test_same_state_ignores_write_time() -> None:
    assert ROW.same_state(StoredRow("acct-1", 5, False, {"seq": 5}, "acct-1:v5", 999))
    assert not ROW.same_state(StoredRow("acct-1", 5, False, {"seq": 6}, "acct-1:v5", 100))


# --- convergence: any duplication and reordering ends at each entity's highest version -------

unique_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(min_value=0, max_value=50),
        st.sampled_from(Op),
        field_maps,
    ),
    max_size=30,
    unique_by=lambda t: (t[0], t[1]),  # no two events share (entity, version): no conflicts
).map(
    lambda specs: [
        make_event(entity, version, op=op, fields=fields) for entity, version, op, fields in specs
    ]
)


@given(events=unique_events, data=st.data())
@settings(max_examples=200)
def test_any_duplication_and_order_converges_to_highest_version(
    events: list[ReconEvent], data: st.DataObject
) -> None:
    copies = data.draw(st.lists(st.integers(1, 3), min_size=len(events), max_size=len(events)))
    delivered = [event for event, n in zip(events, copies, strict=True) for _ in range(n)]
    random.Random(data.draw(st.integers())).shuffle(delivered)

    rows, counts = fold(delivered)

    highest: dict[str, ReconEvent] = {}
    for event in events:
        if event.entity_id not in highest or event.version > highest[event.entity_id].version:
            highest[event.entity_id] = event
    assert rows == {entity: row_for(event, 0) for entity, event in highest.items()}
    assert counts[Outcome.CONFLICT] == 0
    assert sum(counts.values()) == len(delivered)
    # Every extra copy is a no-op (duplicate, or stale if a newer version got there first).
    assert counts[Outcome.DUPLICATE] + counts[Outcome.STALE] >= len(delivered) - len(events)
