"""Fixtures for the domain tests: one of each sink, on fresh storage per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.sinks.base import Sink
from processors.sinks.memory import MemorySink
from processors.sinks.sim import SimulatedSink
from processors.sinks.sqlite import SqliteSink

PG_URL = os.environ.get("RECON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

_pg_skip_reason: str | None = None
_pg_checked = False


def pg_base_url() -> str:
    """The PostgreSQL test server's URL, or skip the test (once checked, remembered)."""
    global _pg_checked, _pg_skip_reason
    if not _pg_checked:
        _pg_checked = True
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("select 1")
        except Exception as exc:
            _pg_skip_reason = (
                f"PostgreSQL not reachable at {PG_URL} ({exc}); set RECON_TEST_POSTGRES_URL"
            )
    if _pg_skip_reason is not None:
        pytest.skip(_pg_skip_reason)
    return PG_URL


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL sink URL with a table of its own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    base = pg_base_url()
    table = f"recon_test_{uuid.uuid4().hex[:12]}"
    yield f"{base}{'&' if '?' in base else '?'}table={table}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


SINK_KINDS = [
    "memory",
    "sqlite",
    "sim",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture
def make_sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Sink]]:
    """``make_sink(kind)``: a new sink of that kind; sinks of one test share storage."""
    opened: list[Sink] = []
    memory = MemorySink()
    pg: str | None = None

    def make(kind: str) -> Sink:
        nonlocal pg
        sink: Sink
        if kind == "memory":
            sink = memory
        elif kind == "sqlite":
            sink = SqliteSink(tmp_path / "sink.db")
        elif kind == "sim":
            sink = SimulatedSink(tmp_path / "sim.db")
        elif kind == "postgres":
            from processors.sinks.postgresql import PostgresSink

            if pg is None:
                pg = request.getfixturevalue("pg_url")
            sink = PostgresSink(pg)
        else:
            raise ValueError(kind)
        opened.append(sink)
        return sink

    yield make
    for sink in opened:
        sink.close()


@pytest.fixture(params=SINK_KINDS)
def sink(request: pytest.FixtureRequest, make_sink: Callable[[str], Sink]) -> Sink:
    kind: str = request.param
    return make_sink(kind)
