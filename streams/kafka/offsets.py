"""Committed offsets, high watermarks and topic reads, through confluent-kafka.

High watermarks come from *fetch* responses (a consumer assigned to the partitions reads,
then asks ``get_watermark_offsets(cached=True)``), not from ListOffsets, which the embedded
broker answers wrongly for multi-record batches (BROKER.md, gap 2). This is right on every
broker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streams.kafka.client_config import confluent_config
from streams.settings import Settings


def partitions_of(settings: Settings, topic: str, timeout_s: float = 10.0) -> list[int]:
    consumer = _consumer(settings, group=f"recon-meta-{uuid.uuid4().hex[:8]}")
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, group: str, topic: str, timeout_s: float = 10.0
) -> dict[int, int]:
    """partition -> committed offset for ``group`` (partitions with no commit are absent)."""
    partitions = partitions_of(settings, topic, timeout_s)
    if not partitions:
        return {}
    consumer = _consumer(settings, group=group)
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}


def read_topic(
    settings: Settings, topic: str, idle_timeout_s: float = 2.0, max_records: int = 10_000_000
) -> Iterator[Message]:
    """Every record of ``topic`` from the beginning, until the topic is idle for a while.

    Used by tests, the demo and DLT tooling; it commits nothing.
    """
    partitions = partitions_of(settings, topic)
    consumer = _consumer(settings, group=f"recon-reader-{uuid.uuid4().hex[:8]}")
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        idle_since = time.monotonic()
        seen = 0
        while seen < max_records and time.monotonic() - idle_since < idle_timeout_s:
            batch = consumer.consume(num_messages=1000, timeout=0.2)
            for msg in batch:
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                seen += 1
                yield msg
            if batch:
                idle_since = time.monotonic()
    finally:
        consumer.close()


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
