"""Reading what is still outstanding in the retry tiers (for the entity-ordering ledger).

For each retry tier and partition: every record from the group's committed offset (the log
start if the group never committed there) up to the partition's high watermark as a *fetch*
response reports it -- never ListOffsets LATEST, which the embedded broker answers wrongly
for multi-record batches (BROKER.md, gap 2). Blocking (confluent-kafka); run it in a thread.

Two consumers, neither of which ever joins the group: one carries the group's id only to
read its committed offsets (OffsetFetch needs no membership), the other reads with a
throw-away group id and commits nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.failures.entity_order import Scanned
from streams.failures.routing import DUE_MS, headers_dict
from streams.kafka.client_config import confluent_config
from streams.settings import Settings


class ScanTimeout(RuntimeError):
    """The retry tiers could not be read to their high watermarks in time."""


def scan_retry_tiers(
    settings: Settings,
    tiers: Sequence[str],
    partitions: Sequence[int],
    timeout_s: float = 60.0,
) -> list[Scanned]:
    """Every uncommitted record of ``tiers`` (tier n is ``tiers[n - 1]``) in ``partitions``."""
    tps = [TopicPartition(topic, p) for topic in tiers for p in partitions]
    if not tps:
        return []
    starts = _start_offsets(settings, tps, timeout_s)
    tier_of = {topic: n for n, topic in enumerate(tiers, start=1)}
    reader = _consumer(
        settings,
        f"recon-order-scan-{uuid.uuid4().hex[:8]}",
        **{"fetch.wait.max.ms": 100},
    )
    found: list[Scanned] = []
    position = dict(starts)
    try:
        reader.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        deadline = time.monotonic() + timeout_s
        pending = set(starts)
        while pending:
            if time.monotonic() > deadline:
                raise ScanTimeout(f"retry tiers not read to their high watermarks: {pending}")
            for msg in reader.consume(num_messages=1000, timeout=0.1):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                topic, partition, offset = str(msg.topic()), msg.partition(), msg.offset()
                if partition is None or offset is None:
                    continue
                position[(topic, partition)] = max(position[(topic, partition)], offset + 1)
                found.append(
                    Scanned(tier_of[topic], partition, offset, msg.key(), _due_ms(msg.headers()))
                )
            for tp in list(pending):
                # The cached high watermark comes from fetch responses only.
                high = reader.get_watermark_offsets(TopicPartition(*tp), cached=True)[1]
                if high >= 0 and position[tp] >= high:
                    pending.discard(tp)
    finally:
        reader.close()
    return found


def _start_offsets(
    settings: Settings, tps: list[TopicPartition], timeout_s: float
) -> dict[tuple[str, int], int]:
    """The group's committed offset per partition, or its log start (ListOffsets EARLIEST,
    which is right on every broker we know) where the group has not committed."""
    group = _consumer(settings, settings.group)
    try:
        committed = group.committed(tps, timeout=timeout_s)
        starts: dict[tuple[str, int], int] = {}
        for tp in committed:
            if tp.offset >= 0:
                starts[(tp.topic, tp.partition)] = tp.offset
            else:
                low, _ = group.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout_s
                )
                starts[(tp.topic, tp.partition)] = max(0, low)
        return starts
    finally:
        group.close()


def _due_ms(headers: Any) -> int:
    try:
        return int(headers_dict(headers or []).get(DUE_MS, "0"))
    except ValueError:
        return 0


def _consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    return Consumer(
        confluent_config(
            settings,
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                **extra,
            },
        )
    )


def require_copartitioned(
    settings: Settings, topics: Sequence[str], timeout_s: float = 15.0
) -> None:
    """Refuse entity ordering unless every topic has the same number of partitions: only then
    does Faust's assignor give partition p of every lane and retry topic to one worker."""
    consumer = _consumer(settings, f"recon-meta-{uuid.uuid4().hex[:8]}")
    try:
        metadata = consumer.list_topics(timeout=timeout_s).topics
    finally:
        consumer.close()
    counts = {t: len(metadata[t].partitions) if t in metadata else 0 for t in topics}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise RuntimeError(
            "RECON_ENTITY_ORDERING needs every lane and retry topic to exist with the main "
            f"topic's partition count; found {counts}"
        )
