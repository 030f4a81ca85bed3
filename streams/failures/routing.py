"""Failure routing: where a failed record goes next, and with which headers.

Pure functions, no I/O: given the record as consumed, the failure, and the clock, decide the
outgoing copy (retry tier n or the DLT). The worker produces that copy, waits for the broker's
ack, and only then lets the source offset be committed (so a crash in between can duplicate
a copy, never lose one; idempotent apply makes the duplicate harmless).

Attempts: ``recon.attempt`` counts failed attempts. A record failing on the main topic leaves
with attempt 1 for tier 1; a record failing on tier n leaves with attempt n+1 for tier n+1, or
for the DLT once every tier has been tried. Permanent failures go straight to the DLT.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from processors.errors import FailureKind, ReconError
from streams.topics import TopicNames

PREFIX = "recon."
ATTEMPT = "recon.attempt"
ORIGINAL_TOPIC = "recon.original.topic"
ORIGINAL_PARTITION = "recon.original.partition"
ORIGINAL_OFFSET = "recon.original.offset"
ORIGINAL_TIMESTAMP = "recon.original.timestamp"
FIRST_FAILURE_MS = "recon.first.failure.ms"
DUE_MS = "recon.due.ms"
ERROR_KIND = "recon.error.kind"
ERROR_CLASS = "recon.error.class"
ERROR_MESSAGE = "recon.error.message"
DLT_REASON = "recon.dlt.reason"
# Set by `recon replay --from-dlt` on redriven records (provenance of the redrive itself).
REDRIVE_COUNT = "recon.redrive.count"
# On a copy parked behind earlier records of its entity (RECON_ENTITY_ORDERING): how many of
# the entity's records were outstanding in the retry tiers when it was parked.
PARKED_BEHIND = "recon.parked.behind"

MAX_ERROR_MESSAGE = 1000  # bytes kept of an error message in a header

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A consumed record, as far as routing needs to know it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    def header(self, name: str) -> bytes | None:
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def int_header(self, name: str) -> int | None:
        raw = self.header(name)
        if raw is None:
            return None
        try:
            return int(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None  # a foreign or damaged header: treat as absent


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    reason: str  # machine-friendly, e.g. "undecodable", "conflict", "downstream_unavailable"
    error_class: str
    message: str


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    due_ms: int | None  # None for the DLT

    @property
    def is_dead_letter(self) -> bool:
        return self.due_ms is None


def classify(exc: BaseException, permanent_classes: Iterable[str] = ()) -> Failure:
    """Transient or permanent. Domain errors carry their own kind; a class named in
    ``permanent_classes`` is permanent; anything else is transient (retried, then
    dead-lettered when the tiers are exhausted -- never dropped)."""
    name = type(exc).__name__
    message = str(exc) or name
    if isinstance(exc, ReconError):
        return Failure(exc.kind, exc.reason, name, message)
    if name in set(permanent_classes):
        return Failure(FailureKind.PERMANENT, "permanent_error", name, message)
    return Failure(FailureKind.TRANSIENT, "unexpected_error", name, message)


def tier_delay_s(delays: Sequence[float], tier: int, jitter: float, rng: random.Random) -> float:
    """Delay before a record in retry ``tier`` (1-based) is due, with jitter.

    Jitter is drawn uniformly from the last ``jitter`` fraction below the tier's delay, so
    copies that failed together spread out instead of all coming due at once, yet no copy
    is due later than the tier's nominal delay.
    """
    base = delays[tier - 1]
    return base * (1.0 - jitter * rng.random())


def route(
    record: SourceRecord,
    failure: Failure,
    *,
    topics: TopicNames,
    delays: Sequence[float],
    jitter: float,
    now_ms: int,
    rng: random.Random,
) -> OutgoingRecord:
    """The copy of ``record`` to produce after ``failure``."""
    attempt = (record.int_header(ATTEMPT) or 0) + 1
    tiers = len(delays)
    provenance = _provenance(record, now_ms)
    error = (
        (ATTEMPT, str(attempt).encode()),
        (ERROR_KIND, failure.kind.value.encode()),
        (ERROR_CLASS, failure.error_class.encode("utf-8", "replace")[:200]),
        (ERROR_MESSAGE, failure.message.encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]),
    )
    kept = tuple(
        (k, v) for k, v in record.headers if not k.startswith(PREFIX) or k == REDRIVE_COUNT
    )
    if failure.kind is FailureKind.PERMANENT or attempt > tiers:
        reason = failure.reason if failure.kind is FailureKind.PERMANENT else "retries_exhausted"
        headers = (*kept, *provenance, *error, (DLT_REASON, reason.encode()))
        return OutgoingRecord(
            topics.dlt, record.partition, record.key, record.value, headers, due_ms=None
        )
    due_ms = now_ms + int(tier_delay_s(delays, attempt, jitter, rng) * 1000)
    headers = (*kept, *provenance, *error, (DUE_MS, str(due_ms).encode()))
    return OutgoingRecord(
        topics.retries[attempt - 1], record.partition, record.key, record.value, headers, due_ms
    )


def park(
    record: SourceRecord,
    tier: int,
    *,
    topics: TopicNames,
    due_ms: int,
    behind: int,
) -> OutgoingRecord:
    """The copy of ``record`` parked into retry ``tier`` behind earlier records of its entity.

    Not a failure: the attempt becomes ``tier`` (the copy follows the tier path of the
    records ahead of it: a later failure moves it on to ``tier + 1``, and after the last tier
    to the DLT), the error headers of an earlier failure are kept, and a record that never
    failed gets no first-failure time.
    """
    replaced = (ATTEMPT, DUE_MS, PARKED_BEHIND)
    kept = tuple((k, v) for k, v in record.headers if k not in replaced)
    if record.header(ORIGINAL_TOPIC) is None:
        kept = (
            *kept,
            (ORIGINAL_TOPIC, record.topic.encode()),
            (ORIGINAL_PARTITION, str(record.partition).encode()),
            (ORIGINAL_OFFSET, str(record.offset).encode()),
            (ORIGINAL_TIMESTAMP, str(record.timestamp_ms).encode()),
        )
    headers = (
        *kept,
        (ATTEMPT, str(tier).encode()),
        (DUE_MS, str(due_ms).encode()),
        (PARKED_BEHIND, str(behind).encode()),
    )
    return OutgoingRecord(
        topics.retries[tier - 1], record.partition, record.key, record.value, headers, due_ms
    )


def with_due(copy: OutgoingRecord, due_ms: int) -> OutgoingRecord:
    """``copy`` (a retry-tier copy) due at ``due_ms`` instead."""
    headers = tuple((k, v) for k, v in copy.headers if k != DUE_MS)
    return replace(copy, headers=(*headers, (DUE_MS, str(due_ms).encode())), due_ms=due_ms)


def _provenance(record: SourceRecord, now_ms: int) -> Headers:
    """Where the record was first consumed from, and when it first failed.

    Copies of copies keep the first provenance, so the DLT always points at the original
    record on the main topic.
    """
    if record.header(ORIGINAL_TOPIC) is not None:
        names = (ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP)
        kept = tuple((n, record.header(n) or b"") for n in names)
        first = record.int_header(FIRST_FAILURE_MS) or now_ms
        return (*kept, (FIRST_FAILURE_MS, str(first).encode()))
    return (
        (ORIGINAL_TOPIC, record.topic.encode()),
        (ORIGINAL_PARTITION, str(record.partition).encode()),
        (ORIGINAL_OFFSET, str(record.offset).encode()),
        (ORIGINAL_TIMESTAMP, str(record.timestamp_ms).encode()),
        (FIRST_FAILURE_MS, str(now_ms).encode()),
    )


def headers_dict(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None],
) -> dict[str, str]:
    """Headers as text, last value wins (for display, tooling and tests)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "") for k, v in items
    }
