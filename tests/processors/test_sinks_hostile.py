"""Hostile identifiers and field names against every sink (SQLite and PostgreSQL included).

Every statement in the sinks is parameterized (values as bind parameters; the PostgreSQL table
name is a validated ``table=`` identifier quoted by psycopg), so text that looks like SQL is
stored and read back verbatim and never executed.
"""

from __future__ import annotations

from processors.apply_rules import StoredRow
from processors.codec import AvroCodec
from processors.sinks.base import Sink
from tests.processors.strategies import make_event
from tests.streams.inprocess import CapturingSender, in_process

HOSTILE_NAMES = [
    "'); DROP TABLE entity_state; --",
    '" OR 1=1 --',
    "%s",
    "%(x)s",
    "?",
    "$1",
    "{table}",
    "\\",
    "';\\x00",
    "名前",
    "line\nbreak",
    "null",
    "__proto__",
]
# Valid ids may use every character of the id charset, including the "odd" ones.
ODD_VALID_ID = "a.b_c:d@e/f+g=h-i"


def test_hostile_field_names_and_values_are_stored_verbatim(sink: Sink) -> None:
    fields = {name: name for name in HOSTILE_NAMES}
    event = make_event(entity_id=ODD_VALID_ID, event_id="ev-1", fields=dict(fields))
    codec = AvroCodec()
    run = in_process(codec, sink)

    result = run.run([codec.encode(event)])

    assert result.counts == {"applied": 1}
    rows = sink.snapshot()
    assert set(rows) == {ODD_VALID_ID}
    assert dict(rows[ODD_VALID_ID].fields) == fields


def test_hostile_entity_ids_are_dead_lettered_and_the_table_survives(sink: Sink) -> None:
    codec = AvroCodec()
    run = in_process(codec, sink)
    hostile = [
        "x'); DROP TABLE entity_state; --",
        "a' OR '1'='1",
        'a"b',
        "a;b",
        "a b",
        "a\\b",
        "acct-1\x00",
        "\uff41\uff43\uff43\uff54",  # full-width letters
    ]
    values = [
        codec.encode_with(make_event(entity_id=eid, event_id="ev-1"), "current", check=False)
        for eid in hostile
    ]
    values.append(codec.encode(make_event(entity_id="acct-ok")))

    result = run.run(values)

    assert result.counts == {"dead_lettered": len(hostile), "applied": 1}
    assert {CapturingSender.reason(r) for r in run.sender.sent} == {"invalid"}
    assert set(sink.snapshot()) == {"acct-ok"}  # the table is still there, with one row


def test_sinks_bind_even_unvalidated_ids(sink: Sink) -> None:
    # Defence in depth: the sink layer itself never builds SQL from values.
    rows = [
        StoredRow(eid, 1, False, {"q": eid}, f"ev'{n}", 1_795_000_000_000)
        for n, eid in enumerate(["x'); DROP TABLE entity_state; --", "a' OR '1'='1", "%s?$1"])
    ]
    sink.write(rows)
    loaded = sink.load([r.entity_id for r in rows] + ["' OR 1=1 --"])
    assert loaded == {r.entity_id: r for r in rows}
    assert sink.snapshot() == loaded
