"""The upstream side: publish reconciliation events, keyed by ``entity_id``.

Uses confluent-kafka's idempotent producer (no duplicates or reordering from producer
retries) with the murmur2 partitioner, the Java clients' default, so a key lands on the same
partition whichever standard client wrote it. Input is JSON lines (validated and encoded to
Avro here; a bad line is reported with its number and not published) or a synthetic load.

Priority lanes: given the topic names, each event goes to its lane's topic by ``priority``
(``critical`` -> ``<topic>.critical``, ``bulk`` -> ``<topic>.bulk``, ``normal`` -> ``<topic>``
as before), with the same key and partitioner; records that are not valid events (poison)
go to ``<topic>``, where they are dead-lettered as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from processors.codec import AvroCodec
from processors.errors import InvalidEvent
from processors.event import EventLimits, event_from_json
from streams.backpressure.lanes import lane_for_priority
from streams.kafka.client_config import confluent_config
from streams.settings import Settings
from streams.topics import TopicNames

MAX_LINE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RejectedLine:
    line_no: int
    reason: str


@dataclass(frozen=True, slots=True)
class Routed:
    """A record for a given topic (its priority lane's), instead of ``publish``'s ``topic``."""

    topic: str
    key: bytes
    value: bytes


def routed(topics: TopicNames, key: bytes, value: bytes, priority: str | None) -> Routed:
    """The record on its lane's topic (``priority`` None -- not a valid event -- : main)."""
    if priority is None:
        return Routed(topics.main, key, value)
    return Routed(topics.lane_topic(lane_for_priority(priority)), key, value)


@dataclass(slots=True)
class PublishReport:
    published: int = 0
    failed: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    # partition -> next offset after the last record we wrote there (from delivery reports),
    # for ``publish``'s ``topic``; every topic written (lanes included) in ``end_offsets_by_topic``
    end_offsets: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    end_offsets_by_topic: dict[str, dict[int, int]] = field(default_factory=dict)
    published_by_topic: dict[str, int] = field(default_factory=dict)


def make_producer(settings: Settings, **extra: Any) -> Producer:
    conf = confluent_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            "log_level": 3,
        },
    )
    conf.update(extra)
    return Producer(conf)


def parse_json_lines(
    lines: Iterable[str],
    codec: AvroCodec,
    limits: EventLimits,
    lanes: TopicNames | None = None,
) -> Iterator[tuple[bytes, bytes] | Routed | RejectedLine]:
    """(key, Avro value) for each valid line -- :class:`Routed` to its lane's topic when
    ``lanes`` is given -- and a RejectedLine for each invalid one."""
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(text) > MAX_LINE_BYTES:
            yield RejectedLine(line_no, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RejectedLine(line_no, f"not JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            event = event_from_json(obj, limits)
            key, value = event.entity_id.encode(), codec.encode(event)
            yield routed(lanes, key, value, event.priority) if lanes else (key, value)
        except InvalidEvent as exc:
            yield RejectedLine(line_no, str(exc))


def publish(
    producer: Producer,
    topic: str,
    records: Iterable[tuple[bytes, bytes] | Routed | RejectedLine],
    *,
    rate_per_s: float | None = None,
    on_progress: Callable[[PublishReport], None] | None = None,
    flush_timeout_s: float = 60.0,
) -> PublishReport:
    """Publish ``records`` (optionally paced to ``rate_per_s``) and wait for every delivery.

    Plain ``(key, value)`` records go to ``topic``; :class:`Routed` ones to their own topic."""
    report = PublishReport()

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            report.failed += 1
            if len(report.errors) < 20:
                report.errors.append(str(err))
            return
        report.published += 1
        written = str(msg.topic())
        report.published_by_topic[written] = report.published_by_topic.get(written, 0) + 1
        partition, offset = msg.partition(), msg.offset()
        if partition is None or offset is None:
            return
        ends = report.end_offsets_by_topic.setdefault(written, {})
        if offset + 1 > ends.get(partition, 0):
            ends[partition] = offset + 1
        if written == topic and offset + 1 > report.end_offsets.get(partition, 0):
            report.end_offsets[partition] = offset + 1

    started = time.monotonic()
    sent = 0
    for item in records:
        if isinstance(item, RejectedLine):
            report.rejected.append(item)
            continue
        if isinstance(item, Routed):
            target, key, value = item.topic, item.key, item.value
        else:
            target = topic
            key, value = item
        while True:
            try:
                producer.produce(target, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
            if on_progress is not None:
                on_progress(report)
        if rate_per_s:
            ahead = sent / rate_per_s - (time.monotonic() - started)
            if ahead > 0.005:
                producer.poll(0)
                time.sleep(ahead)
    remaining = producer.flush(flush_timeout_s)
    if remaining:
        report.failed += remaining
        report.errors.append(f"{remaining} records undelivered after {flush_timeout_s}s")
    if on_progress is not None:
        on_progress(report)
    return report
