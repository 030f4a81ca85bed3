"""PostgreSQL specifics (the shared sink behaviour runs in test_sinks.py for every sink)."""

from __future__ import annotations

import threading

import psycopg
import pytest

from processors.apply_rules import StoredRow
from processors.errors import DownstreamUnavailable
from processors.sinks.postgresql import PostgresSink, split_table

ROW = StoredRow("acct-1", 1, False, {"a": 1}, "acct-1:v1", 1_795_000_000_123)


def test_split_table() -> None:
    assert split_table("postgresql://u@h/db?table=t_1&sslmode=disable") == (
        "postgresql://u@h/db?sslmode=disable",
        "t_1",
    )
    assert split_table("postgres://u@h/db")[1] == "entity_state"
    for bad in ("T", "1abc", "a-b", "a" * 64, "x;drop"):
        with pytest.raises(ValueError, match="must match"):
            split_table(f"postgresql://h/db?table={bad}")


def test_unreachable_server_is_unavailable() -> None:
    sink = PostgresSink("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(DownstreamUnavailable):
        sink.write([ROW])
    with pytest.raises(DownstreamUnavailable):
        sink.load(["acct-1"])


@pytest.mark.postgres
def test_table_schema(pg_url: str) -> None:
    sink = PostgresSink(pg_url)
    sink.write([ROW])
    with psycopg.connect(pg_url.split("?")[0]) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (sink.table,),
        ).fetchall()
    assert columns == [
        ("entity_id", "text"),
        ("version", "bigint"),
        ("deleted", "boolean"),
        ("fields", "jsonb"),
        ("last_event_id", "text"),
        ("updated_at", "timestamp with time zone"),
    ]
    sink.close()


@pytest.mark.postgres
def test_concurrent_table_creation(pg_url: str) -> None:
    errors: list[BaseException] = []

    def create() -> None:
        sink = PostgresSink(pg_url)
        try:
            sink.snapshot()
        except BaseException as exc:
            errors.append(exc)
        finally:
            sink.close()

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.postgres
def test_reconnects_after_the_connection_is_killed(pg_url: str) -> None:
    sink = PostgresSink(pg_url)
    sink.write([ROW])
    assert sink._conn is not None
    pid = sink._conn.info.backend_pid
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # The broken connection surfaces once as a transient error, then the sink reconnects.
    with pytest.raises(DownstreamUnavailable):
        sink.load(["acct-1"])
    assert sink.load(["acct-1"]) == {"acct-1": ROW}
    sink.close()
