"""Dead-letter tooling: list dead letters with their reasons, and redrive them.

A redrive re-publishes matching dead letters to the topic they originally came from, on their
original partition, with the same key and value. It resets the attempt counter (attempt,
due time, error and DLT-reason headers are dropped) but keeps provenance: the
``recon.original.*`` and first-failure headers stay, and ``recon.redrive.count`` counts the
redrives. Redriving is safe to repeat: the same event applied twice is a no-op.

Within one run a dead letter whose original record was dead-lettered more than once (a crash
can duplicate a DLT copy) is redriven once.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import Message

from streams.failures.routing import (
    ATTEMPT,
    DLT_REASON,
    ERROR_CLASS,
    ERROR_KIND,
    ERROR_MESSAGE,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    PREFIX,
    REDRIVE_COUNT,
    headers_dict,
)
from streams.kafka.offsets import read_topic
from streams.publish import make_producer
from streams.settings import Settings

# Headers a redrive keeps: provenance. Everything else under recon.* describes the last
# failure and is dropped, which resets the attempt counter.
_KEPT_ON_REDRIVE = (
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    "recon.original.timestamp",
    "recon.first.failure.ms",
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    dlt_partition: int
    dlt_offset: int
    dead_lettered_ms: int
    key: str
    reason: str
    error_kind: str
    error_class: str
    error_message: str
    attempt: int
    original_topic: str
    original_partition: int
    original_offset: int
    redrive_count: int

    @property
    def original(self) -> tuple[str, int, int]:
        return (self.original_topic, self.original_partition, self.original_offset)


@dataclass(frozen=True, slots=True)
class DltFilter:
    reasons: frozenset[str] = frozenset()
    error_kinds: frozenset[str] = frozenset()
    error_classes: frozenset[str] = frozenset()
    entities: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, letter: DeadLetter) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (not self.error_kinds or letter.error_kind in self.error_kinds)
            and (not self.error_classes or letter.error_class in self.error_classes)
            and (not self.entities or letter.key in self.entities)
            and (self.since_ms is None or letter.dead_lettered_ms >= self.since_ms)
            and (self.until_ms is None or letter.dead_lettered_ms < self.until_ms)
        )


def _int(text: str | None, default: int = -1) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def dead_letter(msg: Message, main_topic: str) -> DeadLetter:
    headers = headers_dict(msg.headers() or [])
    key = msg.key()
    _, timestamp = msg.timestamp()
    return DeadLetter(
        dlt_partition=msg.partition() or 0,
        dlt_offset=msg.offset() or 0,
        dead_lettered_ms=timestamp,
        key=key.decode("utf-8", "replace") if isinstance(key, bytes) else (key or ""),
        reason=headers.get(DLT_REASON, "unknown"),
        error_kind=headers.get(ERROR_KIND, ""),
        error_class=headers.get(ERROR_CLASS, ""),
        error_message=headers.get(ERROR_MESSAGE, ""),
        attempt=_int(headers.get(ATTEMPT), 0),
        original_topic=headers.get(ORIGINAL_TOPIC, main_topic),
        original_partition=_int(headers.get(ORIGINAL_PARTITION), msg.partition() or 0),
        original_offset=_int(headers.get(ORIGINAL_OFFSET)),
        redrive_count=_int(headers.get(REDRIVE_COUNT), 0),
    )


def scan(
    settings: Settings, dlt_filter: DltFilter, idle_timeout_s: float = 2.0
) -> Iterator[tuple[DeadLetter, Message]]:
    """Matching dead letters, each original record once, in DLT order."""
    seen: set[tuple[str, int, int]] = set()
    for msg in read_topic(settings, settings.dlt_topic, idle_timeout_s=idle_timeout_s):
        letter = dead_letter(msg, settings.topic)
        if not dlt_filter.matches(letter):
            continue
        if letter.original_offset >= 0:
            if letter.original in seen:
                continue
            seen.add(letter.original)
        yield letter, msg


def redrive_headers(msg: Message) -> list[tuple[str, str | bytes | None]]:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers: list[tuple[str, str | bytes | None]] = [(k, v) for k, v in pairs]
    count = _int(headers_dict(headers).get(REDRIVE_COUNT), 0) + 1
    kept = [(k, v) for k, v in headers if not k.startswith(PREFIX) or k in _KEPT_ON_REDRIVE]
    return [*kept, (REDRIVE_COUNT, str(count).encode())]


@dataclass(slots=True)
class RedriveReport:
    matched: int = 0
    redriven: int = 0
    failed: int = 0


def redrive(
    settings: Settings, dlt_filter: DltFilter, *, dry_run: bool, out: TextIO | None = None
) -> RedriveReport:
    """Re-publish matching dead letters to their original topic and partition."""
    out = out or sys.stdout
    report = RedriveReport()
    producer = None if dry_run else make_producer(settings)

    def delivered(err: object, _msg: Message) -> None:
        if err is None:
            report.redriven += 1
        else:
            report.failed += 1

    for letter, msg in scan(settings, dlt_filter):
        report.matched += 1
        if producer is None:
            print(_line(letter, prefix="would redrive"), file=out)
            continue
        producer.produce(
            letter.original_topic,
            key=msg.key(),
            value=msg.value(),
            partition=letter.original_partition,
            headers=redrive_headers(msg),
            on_delivery=delivered,
        )
        producer.poll(0)
    if producer is not None:
        report.failed += producer.flush(30)
    return report


def _line(letter: DeadLetter, prefix: str = "") -> str:
    when = datetime.fromtimestamp(letter.dead_lettered_ms / 1000, UTC).isoformat(timespec="seconds")
    origin = f"{letter.original_topic}[{letter.original_partition}]@{letter.original_offset}"
    text = (
        f"{when} {origin} key={letter.key} reason={letter.reason} "
        f"{letter.error_class}: {letter.error_message[:160]}"
    )
    return f"{prefix} {text}".strip()


def print_dead_letters(
    letters: Iterable[DeadLetter], *, as_json: bool, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    count = 0
    for letter in letters:
        count += 1
        print(json.dumps(asdict(letter)) if as_json else _line(letter), file=out)
    return count


def parse_time_ms(text: str) -> int:
    """ISO-8601 (``2026-11-22T10:00:00Z``) or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def filter_from_args(args: Any) -> DltFilter:
    def names(values: list[str] | None) -> frozenset[str]:
        return frozenset(values or ())

    try:
        since = parse_time_ms(args.since) if args.since else None
        until = parse_time_ms(args.until) if args.until else None
    except ValueError as exc:
        raise ValueError(f"--since/--until: {exc}") from None
    return DltFilter(
        reasons=names(args.reason),
        error_kinds=names(args.error_kind),
        error_classes=names(args.error_class),
        entities=names(args.entity),
        since_ms=since,
        until_ms=until,
    )


def add_filter_arguments(parser: Any) -> None:
    group = parser.add_argument_group("dead-letter filters (repeatable; all must match)")
    group.add_argument("--reason", action="append", help="e.g. conflict, retries_exhausted")
    group.add_argument("--error-kind", action="append", choices=("transient", "permanent"))
    group.add_argument("--error-class", action="append", help="e.g. DownstreamUnavailable")
    group.add_argument("--entity", action="append", help="entity id (the record key)")
    group.add_argument("--since", help="dead-lettered at or after (ISO-8601 or epoch ms)")
    group.add_argument("--until", help="dead-lettered before (ISO-8601 or epoch ms)")


def redrive_command(args: Any, settings: Settings) -> int:
    """``recon replay --from-dlt``: redrive (or with --dry-run, show) matching dead letters."""
    report = redrive(settings, filter_from_args(args), dry_run=args.dry_run)
    verb = "would redrive" if args.dry_run else "redrove"
    count = report.matched if args.dry_run else report.redriven
    print(f"{verb} {count} dead letter(s) from {settings.dlt_topic}; failed {report.failed}")
    return 1 if report.failed else 0


def list_command(args: Any, settings: Settings) -> int:
    """``recon dlt``: print dead letters with their reasons."""
    letters = (letter for letter, _ in scan(settings, filter_from_args(args)))
    count = print_dead_letters(letters, as_json=args.json)
    if not args.json:
        print(f"{count} dead letter(s) on {settings.dlt_topic}", file=sys.stderr)
    return 0
