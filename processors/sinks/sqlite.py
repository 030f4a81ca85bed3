"""SQLite sink: one file, WAL journal, guarded upserts.

Durability: WAL with ``synchronous=NORMAL`` makes every committed transaction survive a crash
of the process (including SIGKILL), because the commit has reached the OS before ``write``
returns; only an OS crash or power loss may drop the last few commits (never corrupting the
file). That matches the processor's at-least-once model: offsets are committed after the write,
so anything lost that way is re-delivered and re-applied idempotently.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from processors.apply_rules import StoredRow
from processors.errors import DownstreamTimeout, DownstreamUnavailable, ReconError
from processors.sinks.base import (
    fields_from_json,
    fields_to_json,
    iso_to_ms,
    ms_to_iso,
    newest_per_entity,
)

LOAD_CHUNK = 500  # bound parameters per SELECT (SQLite's historic limit is 999)

_CREATE = """
CREATE TABLE IF NOT EXISTS entity_state (
    entity_id     TEXT PRIMARY KEY NOT NULL,
    version       INTEGER NOT NULL,
    deleted       INTEGER NOT NULL,
    fields        TEXT NOT NULL,
    last_event_id TEXT NOT NULL,
    updated_at    TEXT NOT NULL
)
"""
_COLUMNS = "entity_id, version, deleted, fields, last_event_id, updated_at"
# The version guard lives in the statement: a racing writer with an older row changes nothing.
_UPSERT = f"""
INSERT INTO entity_state ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(entity_id) DO UPDATE SET
    version = excluded.version,
    deleted = excluded.deleted,
    fields = excluded.fields,
    last_event_id = excluded.last_event_id,
    updated_at = excluded.updated_at
WHERE excluded.version > entity_state.version
"""
_SELECT = f"SELECT {_COLUMNS} FROM entity_state"

# Primary result codes (the low byte of the extended code) that mean "try again later".
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_PROTOCOL,
    sqlite3.SQLITE_READONLY,
}


def _translate(exc: sqlite3.Error) -> ReconError | None:
    """The transient error an sqlite3 exception stands for, or None (a real bug: propagate)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    primary = code & 0xFF
    if primary in _BUSY_CODES:
        return DownstreamTimeout(f"sqlite busy/locked: {exc}")
    if primary in _UNAVAILABLE_CODES:
        return DownstreamUnavailable(f"sqlite unavailable: {exc}")
    return None


def _row(record: tuple[str, int, int, str, str, str]) -> StoredRow:
    entity_id, version, deleted, fields, last_event_id, updated_at = record
    return StoredRow(
        entity_id=entity_id,
        version=version,
        deleted=bool(deleted),
        fields=fields_from_json(fields),
        last_event_id=last_event_id,
        updated_at_ms=iso_to_ms(updated_at),
    )


class SqliteSink:
    """``entity_state`` in one SQLite file (``:memory:`` for a private in-memory database)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None  # opened lazily, in the using thread

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            # check_same_thread=False: constructed in one thread, used from the sink thread.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                self._enable_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(_CREATE)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise (_translate(exc) or exc) from exc
        self._conn = conn
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # WAL is a property of the file, set once. Switching needs an exclusive lock and SQLite
        # does not apply busy_timeout to it, so when several connections open a new file at
        # once we retry by hand until busy_timeout has passed.
        if conn.execute("PRAGMA journal_mode").fetchone()[0] in ("wal", "memory"):
            return
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF in _BUSY_CODES
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so a busy database fails (after
        # busy_timeout) before we did any work, rather than at COMMIT.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                # The original error is the one worth reporting, not a failed rollback.
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        ids = list(dict.fromkeys(entity_ids))
        result: dict[str, StoredRow] = {}
        if not ids:
            return result
        conn = self._connection()
        try:
            for start in range(0, len(ids), LOAD_CHUNK):
                chunk = ids[start : start + LOAD_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"{_SELECT} WHERE entity_id IN ({marks})"
                for record in conn.execute(sql, chunk):
                    row = _row(record)
                    result[row.entity_id] = row
        except sqlite3.Error as exc:
            raise (_translate(exc) or exc) from exc
        return result

    def write(self, rows: Sequence[StoredRow]) -> None:
        params = [
            (
                row.entity_id,
                row.version,
                int(row.deleted),
                fields_to_json(row.fields),
                row.last_event_id,
                ms_to_iso(row.updated_at_ms),
            )
            for row in newest_per_entity(rows)
        ]
        if not params:
            return
        conn = self._connection()
        try:
            with self._transaction(conn):
                conn.executemany(_UPSERT, params)
        except sqlite3.Error as exc:
            raise (_translate(exc) or exc) from exc

    def snapshot(self) -> dict[str, StoredRow]:
        conn = self._connection()
        try:
            return {row.entity_id: row for row in map(_row, conn.execute(_SELECT))}
        except sqlite3.Error as exc:
            raise (_translate(exc) or exc) from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
