from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.apply_rules import StoredRow
from processors.errors import DownstreamTimeout, DownstreamUnavailable
from processors.event import Scalar
from processors.sinks import open_sink
from processors.sinks.base import Sink
from processors.sinks.memory import MemorySink
from processors.sinks.sim import SimConditions, SimulatedSink
from processors.sinks.sqlite import SqliteSink
from tests.processors.conftest import SINK_KINDS


def row(
    entity: str = "acct-1",
    version: int = 1,
    fields: dict[str, Scalar] | None = None,
    deleted: bool = False,
    event_id: str | None = None,
    at: int = 1_795_000_000_123,
) -> StoredRow:
    return StoredRow(
        entity_id=entity,
        version=version,
        deleted=deleted,
        fields=fields if fields is not None else {"v": version},
        last_event_id=event_id or f"{entity}:v{version}",
        updated_at_ms=at,
    )


# --- behaviour every sink shares --------------------------------------------------------------


def test_guard_lower_or_equal_version_never_overwrites(sink: Sink) -> None:
    sink.write([row(version=5, fields={"keep": True})])
    sink.write([row(version=3, fields={"older": True})])
    sink.write([row(version=5, fields={"same": True}, event_id="other")])
    assert sink.load(["acct-1"])["acct-1"] == row(version=5, fields={"keep": True})
    sink.write([row(version=6, fields={"newer": True})])
    assert sink.load(["acct-1"])["acct-1"].fields == {"newer": True}


def test_one_write_keeps_the_highest_row_per_entity(sink: Sink) -> None:
    sink.write([row(version=2), row(version=9), row(version=4), row("acct-2", 1)])
    assert {k: v.version for k, v in sink.snapshot().items()} == {"acct-1": 9, "acct-2": 1}


def test_load_returns_only_stored_ids_across_chunks(sink: Sink) -> None:
    sink.write([row(f"e-{i:05d}", i + 1) for i in range(1200)])
    wanted = [f"e-{i:05d}" for i in range(1300)] + ["e-00001"]  # 100 missing, one repeated
    loaded = sink.load(wanted)
    assert len(loaded) == 1200
    assert loaded["e-01199"] == row("e-01199", 1200)
    assert sink.load([]) == {}


def test_values_round_trip(sink: Sink) -> None:
    fields: dict[str, Scalar] = {
        "none": None,
        "yes": True,
        "no": False,
        "zero": 0,
        "max": 2**63 - 1,
        "min": -(2**63),
        "tenth": 0.1,
        "two": 2.0,
        "huge": 1e300,
        "tiny": -5e-324,
        "text": "ünïcode ✓ \n\t \\ \" '",
    }
    sink.write([row(fields=fields), row("acct-2", 7, {}, deleted=True)])
    got = sink.load(["acct-1", "acct-2"])
    assert got["acct-1"] == row(fields=fields)
    assert all(type(got["acct-1"].fields[k]) is type(v) for k, v in fields.items())
    assert got["acct-2"] == row("acct-2", 7, {}, deleted=True)


HOSTILE = [
    "'); DROP TABLE entity_state;--",
    'quote"d',
    "semi;colon",
    "percent %s %(x)s ? ?1 :name $1",
    "back\\slash",
    "ünïcode-✓",
]


def test_hostile_ids_and_field_names_are_stored_verbatim(sink: Sink) -> None:
    fields: dict[str, Scalar] = {name: name for name in HOSTILE}
    sink.write([row(name, 1, fields, event_id=name) for name in HOSTILE])
    snapshot = sink.snapshot()
    assert sorted(snapshot) == sorted(HOSTILE)
    for name in HOSTILE:
        assert snapshot[name] == row(name, 1, fields, event_id=name)
    assert sink.load(HOSTILE[:2]).keys() == set(HOSTILE[:2])
    sink.write([row("after", 1)])  # the table is still there
    assert "after" in sink.snapshot()


def test_empty_write_is_a_no_op(sink: Sink) -> None:
    sink.write([])
    assert sink.snapshot() == {}


@pytest.mark.parametrize("kind", [k for k in SINK_KINDS if k != "memory"])
def test_rows_survive_reopening(kind: str, make_sink: Callable[[str], Sink]) -> None:
    first = make_sink(kind)
    first.write([row(version=3)])
    first.close()
    assert make_sink(kind).load(["acct-1"]) == {"acct-1": row(version=3)}


@pytest.mark.parametrize("kind", [k for k in SINK_KINDS if k != "memory"])
def test_two_writers_racing_never_regress(kind: str, make_sink: Callable[[str], Sink]) -> None:
    """Two sinks on one store, two threads, interleaved out-of-order versions of the same
    entities; a third watches. Versions only ever go up, and the highest wins."""
    entities = [f"acct-{i}" for i in range(30)]
    versions = {0: list(range(1, 41, 2)), 1: list(range(2, 41, 2))}
    writers = [make_sink(kind), make_sink(kind)]
    watcher = make_sink(kind)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        rng = random.Random(worker)
        mine = versions[worker][:]
        rng.shuffle(mine)
        try:
            for version in mine:
                batch = [row(e, version, {"by": worker, "v": version}) for e in entities]
                rng.shuffle(batch)
                writers[worker].write(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    seen: dict[str, int] = {}

    def watch() -> None:
        for entity, stored in watcher.snapshot().items():
            assert stored.version >= seen.get(entity, 0), f"{entity} went backwards"
            seen[entity] = stored.version

    while any(t.is_alive() for t in threads):
        watch()
        time.sleep(0.005)
    for t in threads:
        t.join()
    watch()
    assert errors == []
    final = watcher.snapshot()
    assert {e: r.version for e, r in final.items()} == dict.fromkeys(entities, 40)
    assert all(r.fields == {"by": 1, "v": 40} for r in final.values())


# --- open_sink ----------------------------------------------------------------------------------


def test_open_sink_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from processors.sinks.postgresql import PostgresSink

    monkeypatch.chdir(tmp_path)
    assert isinstance(open_sink("memory://"), MemorySink)
    relative = open_sink("sqlite:///sub.db")
    assert isinstance(relative, SqliteSink) and relative.path == "sub.db"
    absolute = open_sink(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteSink) and absolute.path == f"{tmp_path}/abs.db"
    # Construction does not connect: no server is needed here.
    pg = open_sink("postgresql://u@127.0.0.1:1/db?table=my_table&sslmode=disable")
    assert isinstance(pg, PostgresSink) and pg.table == "my_table"
    assert isinstance(open_sink("postgres://u@h/db"), PostgresSink)
    sim = open_sink(f"sim://?db={tmp_path}/s.db&latency_ms=5&jitter_ms=2&error_rate=0.5&seed=1")
    assert isinstance(sim, SimulatedSink)
    assert sim.conditions == SimConditions(latency_ms=5, jitter_ms=2, error_rate=0.5)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "expected scheme://"),
        ("recon.db", "expected scheme://"),
        ("mysql://h/db", "unknown scheme 'mysql'"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///", "missing the database path"),
        ("sqlite:///x.db?mode=ro", "no parameters"),
        ("memory://x", "no path or parameters"),
        ("postgresql://h/db?table=Bad-Name", "must match"),
        ("postgresql://h/db?table=", "must match"),
        ("sim://?bogus=1", "unknown sim:// parameter 'bogus'"),
        ("sim://?error_rate=2", "error_rate must be within"),
        ("sim://?latency_ms=abc", "could not convert"),
        ("sim://?latency_ms=-1", "latency_ms must be finite and >= 0"),
        ("sim://?outage=maybe", "outage='maybe'"),
        ("sim://host/", "expected sim://"),
    ],
)
def test_open_sink_rejects_with_the_accepted_forms(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="Accepted forms") as caught:
        open_sink(url)
    assert why in str(caught.value)
    assert "sqlite:///relative/path.db" in str(caught.value)


# --- SQLite specifics ---------------------------------------------------------------------------


def test_sqlite_uses_wal_and_normal_sync(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "s.db")
    sink.write([row()])
    conn = sink._connection()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    sink.close()


def test_sqlite_built_in_one_thread_used_in_another(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "s.db")
    sink.write([row()])  # connects in this thread
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(sink.load(["acct-1"])))
    worker.start()
    worker.join()
    assert result == [{"acct-1": row()}]
    sink.close()


def test_sqlite_locked_database_is_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    sink = SqliteSink(path, busy_timeout_ms=50)
    sink.write([row(version=1)])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DownstreamTimeout):
            sink.write([row(version=2)])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    sink.write([row(version=3)])  # usable again
    assert sink.load(["acct-1"])["acct-1"].version == 3
    sink.close()


def test_sqlite_unopenable_path_is_unavailable_then_recovers(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "missing-dir" / "s.db")
    with pytest.raises(DownstreamUnavailable):
        sink.write([row()])
    (tmp_path / "missing-dir").mkdir()
    sink.write([row()])
    assert sink.snapshot() == {"acct-1": row()}
    sink.close()


def test_sqlite_programming_errors_propagate(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "s.db")
    sink.write([row()])
    sink._connection().execute("DROP TABLE entity_state")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        sink.write([row(version=2)])
    sink.close()
