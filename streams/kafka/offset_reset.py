"""Resetting a consumer group's committed offsets on one topic (``recon replay``).

A reset is planned first (:func:`plan_reset`: before/after per partition, nothing changed),
then applied (:func:`apply_reset`) with ``AdminClient.alter_consumer_group_offsets``.
Replaying is safe by the contract: the same event applied again is a no-op.

A live group is refused (:func:`check_idle`): its members would go on from their in-memory
positions and their next commit would overwrite the reset (and a real Kafka broker rejects
an offset change for a group with members). ``--force`` skips the check, for operators who
know the members are about to go away.

Where offsets come from:
* earliest: the log start offset (ListOffsets EARLIEST).
* end: the high watermark of a fetch response (ListOffsets LATEST is wrong on the embedded
  broker, BROKER.md gap 2).
* a timestamp: ``offsets_for_times`` gives a starting point, then records are read forward
  to the first one whose timestamp is at or after the target. On Apache Kafka the broker's
  answer is already that record and one record is read; a broker that answers with an
  earlier offset (the embedded one answers the log start) costs a longer read, never a
  wrong offset.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from streams.kafka.client_config import confluent_config
from streams.kafka.groups import (
    GroupInfo,
    alter_offsets,
    describe_group,
    group_offsets,
    topic_partitions,
)
from streams.kafka.lag import fetch_views, low_watermarks
from streams.settings import Settings


class InvalidTarget(ValueError):
    """The requested reset cannot be planned (unknown topic/partition, offset out of range)."""


class GroupIsLive(RuntimeError):
    """The group has live members; resetting its offsets now would not stick."""

    def __init__(self, info: GroupInfo) -> None:
        self.info = info
        if info.members:
            clients = ", ".join(sorted({f"{m.client_id}@{m.host}" for m in info.members}))
            who = f"has {len(info.members)} live member(s) ({clients})"
        else:
            # The embedded broker lists no members, and keeps a stopped aiokafka (Faust)
            # member registered until another member joins: an active state is all we see.
            who = f"is {info.state} and this broker does not list its members"
        super().__init__(f"group {info.group} {who}; stop its workers first (or pass --force)")


@dataclass(frozen=True, slots=True)
class ToOffsets:
    offsets: Mapping[int, int]  # partition -> offset; partitions not named are left alone


@dataclass(frozen=True, slots=True)
class ToTimestamp:
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class ToEarliest:
    pass


ResetTarget = ToOffsets | ToTimestamp | ToEarliest


@dataclass(frozen=True, slots=True)
class OffsetChange:
    topic: str
    partition: int
    before: int | None  # None: the group never committed this partition
    after: int
    low: int
    high: int

    @property
    def delta(self) -> int:
        """Records consumed again (positive) or skipped (negative) by this change."""
        current = self.before if self.before is not None else self.low
        return current - self.after


# --- parsing ---------------------------------------------------------------------------------


def parse_offset_specs(specs: Sequence[str]) -> dict[int, int]:
    """``["0:120", "3:0"]`` -> ``{0: 120, 3: 0}``."""
    offsets: dict[int, int] = {}
    for spec in specs:
        partition, sep, offset = spec.partition(":")
        if not sep or not partition.strip().isdigit() or not offset.strip().isdigit():
            raise InvalidTarget(f"{spec!r} is not PARTITION:OFFSET (e.g. 0:120)")
        p = int(partition)
        if p in offsets:
            raise InvalidTarget(f"partition {p} given twice")
        offsets[p] = int(offset)
    if not offsets:
        raise InvalidTarget("--to-offset needs at least one PARTITION:OFFSET")
    return offsets


def parse_timestamp_ms(text: str) -> int:
    """Epoch milliseconds (all digits) or ISO-8601 (``2026-11-22T10:00:00Z``; naive = UTC)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidTarget(f"{text!r} is neither epoch milliseconds nor ISO-8601") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# --- plan and apply --------------------------------------------------------------------------


def check_idle(settings: Settings, group: str, timeout_s: float = 10.0) -> GroupInfo:
    """The group's description; raises :class:`GroupIsLive` if it has members."""
    info = describe_group(settings, group, timeout_s)
    if info.live:
        raise GroupIsLive(info)
    return info


def plan_reset(
    settings: Settings,
    group: str,
    topic: str,
    target: ResetTarget,
    timeout_s: float = 15.0,
) -> list[OffsetChange]:
    """Before/after offsets per partition for ``target``; changes nothing."""
    partitions = topic_partitions(settings, [topic], timeout_s).get(topic)
    if not partitions:
        raise InvalidTarget(f"topic {topic} does not exist")
    if isinstance(target, ToOffsets):
        unknown = sorted(set(target.offsets) - set(partitions))
        if unknown:
            raise InvalidTarget(f"topic {topic} has no partition {unknown[0]} (has {partitions})")
        partitions = sorted(target.offsets)
    committed = group_offsets(settings, group, timeout_s).get(topic, {})
    tps = [(topic, p) for p in partitions]
    lows = low_watermarks(settings, tps, timeout_s)
    highs = {
        tp: view.high_watermark
        for tp, view in fetch_views(settings, {tp: lows[tp] for tp in tps}, timeout_s).items()
    }
    if isinstance(target, ToOffsets):
        after = dict(target.offsets)
        for p, offset in after.items():
            low, high = lows[(topic, p)], highs[(topic, p)]
            if not low <= offset <= high:
                raise InvalidTarget(
                    f"offset {offset} is outside partition {p}'s range [{low}, {high}]"
                )
    elif isinstance(target, ToEarliest):
        after = {p: lows[(topic, p)] for p in partitions}
    else:
        after = offsets_at_time(settings, topic, target.timestamp_ms, lows, highs, timeout_s)
    return [
        OffsetChange(
            topic=topic,
            partition=p,
            before=committed.get(p),
            after=after[p],
            low=lows[(topic, p)],
            high=highs[(topic, p)],
        )
        for p in partitions
    ]


def apply_reset(
    settings: Settings, group: str, changes: Sequence[OffsetChange], timeout_s: float = 15.0
) -> dict[tuple[str, int], int | None]:
    """Commit the planned offsets for ``group``; returns the committed offsets read back."""
    alter_offsets(
        settings, group, {(c.topic, c.partition): c.after for c in changes}, timeout_s=timeout_s
    )
    now = group_offsets(settings, group, timeout_s)
    return {(c.topic, c.partition): now.get(c.topic, {}).get(c.partition) for c in changes}


def offsets_at_time(
    settings: Settings,
    topic: str,
    timestamp_ms: int,
    lows: Mapping[tuple[str, int], int],
    highs: Mapping[tuple[str, int], int],
    timeout_s: float = 30.0,
) -> dict[int, int]:
    """partition -> offset of the first record with timestamp >= ``timestamp_ms`` (else the
    end offset), for every partition in ``lows``."""
    consumer = Consumer(
        confluent_config(
            settings,
            **{
                "group.id": f"recon-replay-{uuid.uuid4().hex[:8]}",  # never joins or commits
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,
                "log_level": 3,
            },
        )
    )
    try:
        answers = consumer.offsets_for_times(
            [TopicPartition(t, p, timestamp_ms) for t, p in lows], timeout=timeout_s
        )
        found: dict[int, int] = {}
        scan: dict[int, int] = {}  # partition -> offset to read forward from
        for answer in answers:
            tp = (answer.topic, answer.partition)
            low, high = lows[tp], highs[tp]
            start = answer.offset if answer.offset >= 0 else high
            start = min(max(start, low), high)
            if start >= high:
                found[answer.partition] = high
            else:
                scan[answer.partition] = start
        if scan:
            consumer.assign([TopicPartition(topic, p, o) for p, o in scan.items()])
            deadline = time.monotonic() + timeout_s
            while len(found) < len(lows) and time.monotonic() < deadline:
                done: list[TopicPartition] = []
                for msg in consumer.consume(num_messages=500, timeout=0.2):
                    p = int(msg.partition() or 0)
                    if msg.error() is not None or p in found:
                        continue
                    offset = int(msg.offset() or 0)
                    if msg.timestamp()[1] >= timestamp_ms:
                        found[p] = offset
                    elif offset + 1 >= highs[(topic, p)]:
                        found[p] = highs[(topic, p)]  # no record at or after the time
                    if p in found:
                        done.append(TopicPartition(topic, p))
                if done:
                    consumer.pause(done)
    finally:
        consumer.close()
    missing = sorted(set(p for _, p in lows) - set(found))
    if missing:
        raise InvalidTarget(f"could not read partitions {missing} of {topic} in {timeout_s}s")
    return found
