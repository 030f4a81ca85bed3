"""PostgreSQL sink (psycopg 3): guarded upserts, one transaction per write.

The URL is a libpq URL (``postgresql://`` or ``postgres://``) with one optional extra query
parameter, ``table=`` (default ``entity_state``), so tests and side-by-side runs can use their
own table; it is removed before connecting.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from processors.apply_rules import StoredRow
from processors.errors import DownstreamTimeout, DownstreamUnavailable, ReconError
from processors.sinks.base import (
    datetime_to_ms,
    fields_from_json,
    fields_to_json,
    ms_to_datetime,
    newest_per_entity,
)

DEFAULT_TABLE = "entity_state"
TABLE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DEFAULT_CONNECT_TIMEOUT_S = 10

_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    entity_id     text PRIMARY KEY,
    version       bigint NOT NULL,
    deleted       boolean NOT NULL,
    fields        jsonb NOT NULL,
    last_event_id text NOT NULL,
    updated_at    timestamptz NOT NULL
)
"""
# The version guard lives in the statement: a racing writer with an older row changes nothing.
_UPSERT = """
INSERT INTO {table} (entity_id, version, deleted, fields, last_event_id, updated_at)
VALUES (%s, %s, %s, %s::jsonb, %s, %s)
ON CONFLICT (entity_id) DO UPDATE SET
    version = excluded.version,
    deleted = excluded.deleted,
    fields = excluded.fields,
    last_event_id = excluded.last_event_id,
    updated_at = excluded.updated_at
WHERE excluded.version > {table}.version
"""
# fields::text and our own parser: JSONB prints numbers as numerics (see fields_from_json).
_SELECT = "SELECT entity_id, version, deleted, fields::text, last_event_id, updated_at FROM {table}"


def split_table(url: str) -> tuple[str, str]:
    """``(conninfo_without_table, table)``; raises ValueError for a bad table name."""
    parts = urlsplit(url)
    table = DEFAULT_TABLE
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "table":
            table = value
        else:
            kept.append((key, value))
    if not TABLE_PATTERN.match(table):
        raise ValueError(f"table={table!r} must match {TABLE_PATTERN.pattern}")
    return urlunsplit(parts._replace(query=urlencode(kept))), table


def _translate(exc: psycopg.Error) -> ReconError | None:
    """The transient error a driver exception stands for, or None (a real bug: propagate)."""
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return DownstreamTimeout(f"postgresql timed out: {exc}")
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return DownstreamTimeout(f"postgresql connect timed out: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        # Connection refused/lost, admin shutdown, deadlock, serialization failure, ...
        return DownstreamUnavailable(f"postgresql unavailable: {exc}")
    return None


def _row(record: tuple[str, int, bool, str, str, datetime]) -> StoredRow:
    entity_id, version, deleted, fields, last_event_id, updated_at = record
    return StoredRow(
        entity_id=entity_id,
        version=version,
        deleted=deleted,
        fields=fields_from_json(fields),
        last_event_id=last_event_id,
        updated_at_ms=datetime_to_ms(updated_at),
    )


class PostgresSink:
    """``entity_state`` (or ``table=``) in PostgreSQL; connects lazily, reconnects when broken."""

    def __init__(self, url: str) -> None:
        self._conninfo, self.table = split_table(url)
        ident = sql.Identifier(self.table)
        self._create = sql.SQL(_CREATE).format(table=ident)
        self._upsert = sql.SQL(_UPSERT).format(table=ident)
        self._select = sql.SQL(_SELECT).format(table=ident)
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        options: dict[str, Any] = {"autocommit": True, "application_name": "recon-streams"}
        if "connect_timeout" not in self._conninfo:
            options["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT_S
        conn = psycopg.connect(self._conninfo, **options)
        try:
            with conn.transaction():
                # CREATE TABLE IF NOT EXISTS can still fail when two sessions race on it
                # (duplicate type name); a transaction-scoped advisory lock serialises creators.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("recon:" + self.table,))
                conn.execute(self._create)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _fail(self, exc: psycopg.Error) -> ReconError | None:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._conn = None  # reconnect on the next call
        return _translate(exc)

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        ids = list(dict.fromkeys(entity_ids))
        if not ids:
            return {}
        query = sql.Composed([self._select, sql.SQL(" WHERE entity_id = ANY(%s)")])
        try:
            records = self._connection().execute(query, (ids,)).fetchall()
        except psycopg.Error as exc:
            raise (self._fail(exc) or exc) from exc
        return {row.entity_id: row for row in map(_row, records)}

    def write(self, rows: Sequence[StoredRow]) -> None:
        params = [
            (
                row.entity_id,
                row.version,
                row.deleted,
                fields_to_json(row.fields),
                row.last_event_id,
                ms_to_datetime(row.updated_at_ms),
            )
            for row in newest_per_entity(rows)  # sorted: same lock order in every writer
        ]
        if not params:
            return
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._upsert, params)  # pipelined by psycopg
        except psycopg.Error as exc:
            raise (self._fail(exc) or exc) from exc

    def snapshot(self) -> dict[str, StoredRow]:
        try:
            records = self._connection().execute(self._select).fetchall()
        except psycopg.Error as exc:
            raise (self._fail(exc) or exc) from exc
        return {row.entity_id: row for row in map(_row, records)}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
