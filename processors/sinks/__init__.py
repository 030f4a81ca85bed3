"""Sinks: where entity rows are stored. ``open_sink(url)`` picks one from a URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from processors.sinks.base import Sink
from processors.sinks.memory import MemorySink
from processors.sinks.sqlite import SqliteSink

ACCEPTED_FORMS = (
    "memory://",
    "sqlite:///relative/path.db  or  sqlite:////absolute/path.db  or  sqlite:///:memory:",
    "postgresql://user@host:5432/db[?table=name]  (also postgres://)",
    "sim://?db=PATH&control=PATH&latency_ms=N&jitter_ms=N&error_rate=P&seed=N",
)

__all__ = ["ACCEPTED_FORMS", "MemorySink", "Sink", "SqliteSink", "open_sink"]


def _bad(url: str, why: str) -> ValueError:
    forms = "\n  ".join(ACCEPTED_FORMS)
    return ValueError(f"bad sink URL {url!r}: {why}. Accepted forms:\n  {forms}")


def open_sink(url: str) -> Sink:
    """A sink for ``url``; ValueError (listing the accepted forms) if it is not one of them."""
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "expected scheme://...")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise _bad(url, "memory:// takes no path or parameters")
        return MemorySink()
    if scheme == "sqlite":
        # sqlite:///rel.db -> "rel.db"; sqlite:////abs.db -> "/abs.db" (SQLAlchemy's convention)
        if parts.netloc:
            raise _bad(url, "sqlite URLs have no host: use three slashes, sqlite:///path.db")
        if parts.query or parts.fragment:
            raise _bad(url, "sqlite URLs take no parameters")
        path = parts.path[1:]
        if not path:
            raise _bad(url, "missing the database path")
        return SqliteSink(path)
    if scheme in ("postgresql", "postgres"):
        from processors.sinks.postgresql import PostgresSink  # psycopg only when needed

        try:
            return PostgresSink(url)
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
    if scheme == "sim":
        from processors.sinks.sim import SimulatedSink

        try:
            return SimulatedSink.from_url(url)
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
    raise _bad(url, f"unknown scheme {parts.scheme!r}")
