"""Failures of the domain layer, each tagged with how the caller should route it.

``kind`` tells the streams side where a failed record goes: a *permanent* failure will fail
the same way on every attempt (bad bytes, an invalid event, a version conflict), so it goes
straight to the dead-letter topic; a *transient* failure (the downstream store is down or slow)
may succeed later, so it goes through the retry tiers. ``reason`` is a short machine-friendly
tag for headers and metric labels; the message is for humans.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class ReconError(Exception):
    """Base of every failure the domain layer raises on purpose."""

    kind: ClassVar[FailureKind] = FailureKind.PERMANENT
    reason: str = "error"  # the class's default; an instance may narrow it (e.g. "too_large")

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or type(self).reason

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only ``reason`` would be lost by the default exception pickling.
        return (_rebuild, (type(self), self.message, self.reason))


def _rebuild(cls: type[ReconError], message: str, reason: str) -> ReconError:
    return cls(message, reason=reason)


# --- permanent: the same record fails the same way on every attempt ---------------------------


class DecodeError(ReconError):
    """The bytes are not a readable event (wrong magic, unknown schema, truncated, too large)."""

    reason = "undecodable"


class InvalidEvent(ReconError):
    """The event decoded (or parsed) but breaks a rule: bad id, limit exceeded, wrong type."""

    reason = "invalid"


class ConflictError(ReconError):
    """Same entity and version as the stored row but a different event id."""

    reason = "conflict"


# --- transient: the downstream store may recover ----------------------------------------------


class DownstreamUnavailable(ReconError):
    """The store refused or dropped the connection, or the write failed before committing."""

    kind = FailureKind.TRANSIENT
    reason = "downstream_unavailable"


class DownstreamTimeout(ReconError):
    """The store did not answer in time (busy, locked, statement timeout)."""

    kind = FailureKind.TRANSIENT
    reason = "downstream_timeout"
