from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.errors import InvalidEvent
from processors.event import (
    EventLimits,
    Op,
    Priority,
    ReconEvent,
    event_from_json,
    event_to_json,
    parse_occurred_at,
    validate,
)
from tests.processors.strategies import events, make_event

LIMITS = EventLimits()
CONTRACT_EXAMPLE: dict[str, Any] = {
    "event_id": "e-1",
    "entity_id": "acct-42",
    "version": 7,
    "op": "upsert",
    "fields": {"balance": 120.5, "status": "open"},
    "priority": "normal",
    "occurred_at": "2026-11-22T10:00:00Z",
    "source": "billing",
}


def test_contract_example_parses() -> None:
    event = event_from_json(CONTRACT_EXAMPLE, LIMITS)
    assert event == ReconEvent(
        event_id="e-1",
        entity_id="acct-42",
        version=7,
        op=Op.UPSERT,
        fields={"balance": 120.5, "status": "open"},
        priority=Priority.NORMAL,
        occurred_at_ms=1_795_341_600_000,
        source="billing",
    )


def test_json_defaults() -> None:
    minimal = {k: CONTRACT_EXAMPLE[k] for k in ("event_id", "entity_id", "version", "op")}
    event = event_from_json({**minimal, "occurred_at": 5}, LIMITS)
    assert event.priority is Priority.NORMAL
    assert event.source == "unknown"
    assert event.fields == {}
    assert event.occurred_at_ms == 5


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.001Z", 1),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T19:00:00-05:00", 0),
        ("2026-11-22T10:00:00.123456+00:00", 1_795_341_600_123),
    ],
)
def test_occurred_at_forms(text: str, ms: int) -> None:
    assert parse_occurred_at(text) == ms


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"occurred_at": "2026-11-22T10:00:00"}, "needs a timezone"),
        ({"occurred_at": "yesterday"}, "not an ISO-8601"),
        ({"occurred_at": 1.5}, "occurred_at must be"),
        ({"occurred_at": True}, "occurred_at must be"),
        ({"version": "7"}, "version must be an integer"),
        ({"version": True}, "version must be an integer"),
        ({"version": -1}, "outside 0 <= version"),
        ({"version": 2**63}, "outside 0 <= version"),
        ({"op": "merge"}, "op 'merge' is not one of"),
        ({"priority": "urgent"}, "priority 'urgent'"),
        ({"entity_id": "acct 42"}, "entity_id 'acct 42' has characters outside"),
        ({"event_id": ""}, "event_id must not be empty"),
        ({"event_id": 12}, "event_id must be a string"),
        ({"fields": [1, 2]}, "fields must be an object"),
        ({"fields": {"nested": {"a": 1}}}, "dict is not a scalar"),
        ({"fields": {"big": 2**64}}, "out of the 64-bit range"),
        ({"fields": {"nan": float("nan")}}, "not a finite number"),
        ({"fields": {"nul": "a\x00b"}}, "contains a NUL"),
        ({"fields": {"bad": "\ud800"}}, "lone surrogate"),
        ({"fields": {"": 1}}, "field name must not be empty"),
        ({"source": ""}, "source must be a non-empty string"),
        ({"extra": 1}, "unknown keys ['extra']"),
    ],
)
def test_json_rejections_are_precise(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        event_from_json({**CONTRACT_EXAMPLE, **patch}, LIMITS)
    assert message in str(caught.value)
    assert caught.value.reason == "invalid"


def test_missing_keys_are_named() -> None:
    with pytest.raises(InvalidEvent, match=r"missing required keys \['version', 'op'\]"):
        event_from_json(
            {k: v for k, v in CONTRACT_EXAMPLE.items() if k not in ("version", "op")}, LIMITS
        )


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            make_event(entity_id="x" * 257, event_id="e"),
            "entity_id is 257 chars, over max_id_len=256",
        ),
        (make_event(fields={f"f{i}": i for i in range(257)}), "257 entries, over max_fields=256"),
        (make_event(fields={"n" * 129: 1}), "over max_field_name_len=128"),
        (make_event(fields={"s": "x" * 8193}), "8193 chars, over max_string_len=8192"),
        (make_event(occurred_at_ms=10**15), "outside years 1..9999"),
    ],
)
def test_limits_name_the_limit(event: ReconEvent, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        validate(event, LIMITS)


def test_limits_are_configurable() -> None:
    small = EventLimits(max_fields=1)
    with pytest.raises(InvalidEvent, match="max_fields=1"):
        validate(make_event(fields={"a": 1, "b": 2}), small)
    assert validate(make_event(fields={"a": 1}), small)


def test_validate_returns_the_event() -> None:
    event = make_event(fields={"a": None, "b": True, "c": 1, "d": 1.5, "e": "x"})
    assert validate(event, LIMITS) is event


@given(events)
@settings(max_examples=200)
def test_json_round_trip(event: ReconEvent) -> None:
    as_json = json.loads(json.dumps(event_to_json(event)))
    assert event_from_json(as_json, LIMITS) == event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
near_events = st.fixed_dictionaries(
    {},
    optional={k: json_values | st.just(v) for k, v in CONTRACT_EXAMPLE.items()},
)


@given(st.one_of(json_values, near_events))
@settings(max_examples=200)
def test_any_json_is_an_event_or_invalid_event(obj: object) -> None:
    try:
        event = event_from_json(obj, LIMITS)
    except InvalidEvent:
        return
    assert validate(event, LIMITS) is event
