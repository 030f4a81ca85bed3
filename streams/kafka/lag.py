"""Consumer lag per group, topic and partition -- in messages and in seconds -- and a
Burrow-style status per partition over a window of samples.

How each number is measured (and why):

* committed offset: the group's committed offsets (AdminClient ``list_consumer_group_offsets``).
* high watermark: from a *fetch* response. A consumer is assigned to every partition at the
  group's committed offset and fetches; librdkafka caches the high watermark each fetch
  response carries, read with ``get_watermark_offsets(cached=True)``. ListOffsets LATEST is
  not used: the embedded broker answers it wrongly for multi-record batches (BROKER.md gap 2),
  and a fetch response is right on every broker.
* lag in messages: ``high watermark - committed`` (a partition the group never committed is
  measured from its low watermark, where ``auto.offset.reset=earliest`` would start).
* lag in seconds: ``now - timestamp`` of the record at the committed offset -- the oldest
  record the group has not yet processed -- read by that same fetch; 0 when caught up.

The status evaluation (:func:`evaluate_status`) is a pure function over samples.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import pairwise
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.kafka.client_config import confluent_config
from streams.kafka.groups import GroupInfo, describe_group, group_offsets, topic_partitions
from streams.settings import Settings
from streams.topics import TopicNames

TP = tuple[str, int]


class LagUnavailable(RuntimeError):
    """The broker did not answer the fetches needed to measure lag in time."""


# --- fetch-based watermarks ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchView:
    """What one fetch from ``start`` told us about a partition."""

    start: int
    high_watermark: int
    first_offset: int | None = None  # first record at or after ``start``, if any was read
    first_timestamp_ms: int | None = None


def low_watermarks(settings: Settings, tps: Iterable[TP], timeout_s: float = 10.0) -> dict[TP, int]:
    """Log start offsets (ListOffsets EARLIEST, which is right on every broker we know)."""
    consumer = _consumer(settings)
    try:
        return {
            tp: consumer.get_watermark_offsets(TopicPartition(*tp), timeout=timeout_s)[0]
            for tp in tps
        }
    finally:
        consumer.close()


def fetch_views(
    settings: Settings, starts: Mapping[TP, int], timeout_s: float = 15.0
) -> dict[TP, FetchView]:
    """Fetch each partition once from its start offset: its high watermark and first record.

    Uses its own consumer, never asked for ListOffsets LATEST, so the cached high watermark
    can only come from fetch responses. A partition is done once its high watermark is known
    and either it has no record at ``start`` (start >= high watermark) or its first record
    arrived; it is then paused so the client stops prefetching it. Raises
    :class:`LagUnavailable` if some partition is not done within ``timeout_s``.
    """
    if not starts:
        return {}
    consumer = _consumer(
        settings,
        **{"fetch.wait.max.ms": 100, "queued.max.messages.kbytes": 1024},
    )
    views: dict[TP, FetchView] = {}
    first: dict[TP, tuple[int, int]] = {}
    try:
        consumer.assign([TopicPartition(t, p, max(0, o)) for (t, p), o in starts.items()])
        deadline = time.monotonic() + timeout_s
        while len(views) < len(starts) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.1):
                if msg.error() is not None:
                    continue
                key = (str(msg.topic()), int(msg.partition() or 0))
                if key not in first and key in starts:
                    _, ts = msg.timestamp()
                    first[key] = (int(msg.offset() or 0), ts)
            newly_done: list[TopicPartition] = []
            for tp, start in starts.items():
                if tp in views:
                    continue
                high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1]
                if high < 0:
                    continue  # no fetch response yet
                if tp in first:
                    offset, ts = first[tp]
                    views[tp] = FetchView(start, high, offset, ts if ts > 0 else None)
                elif start >= high:
                    views[tp] = FetchView(start, high)
                else:
                    continue
                newly_done.append(TopicPartition(*tp))
            if newly_done:
                consumer.pause(newly_done)
    finally:
        consumer.close()
    missing = sorted(set(starts) - set(views))
    if missing:
        names = ", ".join(f"{t}[{p}]" for t, p in missing)
        raise LagUnavailable(f"no fetch response within {timeout_s}s for {names}")
    return views


def _consumer(settings: Settings, **extra: Any) -> Consumer:
    return Consumer(
        confluent_config(
            settings,
            **{
                "group.id": f"recon-lag-{uuid.uuid4().hex[:8]}",  # never joins, never commits
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
                **extra,
            },
        )
    )


# --- one measurement -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: the group never committed this partition
    high_watermark: int
    lag_messages: int
    lag_seconds: float
    next_timestamp_ms: int | None  # timestamp of the oldest unprocessed record


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    state: str
    members: int | None  # None: the broker lists no members for an active group
    at_s: float  # wall clock (epoch seconds) of the measurement
    partitions: tuple[PartitionLag, ...]

    def total(self, topic: str | None = None) -> int:
        return sum(p.lag_messages for p in self.partitions if topic in (None, p.topic))


def measure_lag(
    settings: Settings,
    group: str | None = None,
    topics: Sequence[str] | None = None,
    *,
    timeout_s: float = 15.0,
    clock: Any = time.time,
) -> GroupLag:
    """Lag of ``group`` (default: the settings' group) on every topic a worker consumes."""
    group = group or settings.group
    names = list(topics) if topics is not None else consumed_topics(settings)
    info: GroupInfo = describe_group(settings, group, timeout_s)
    committed = group_offsets(settings, group, timeout_s)
    partitions = topic_partitions(settings, names, timeout_s)
    tps = [(t, p) for t in names for p in partitions.get(t, [])]
    uncommitted = [tp for tp in tps if tp[1] not in committed.get(tp[0], {})]
    lows = low_watermarks(settings, uncommitted, timeout_s) if uncommitted else {}
    starts = {tp: committed.get(tp[0], {}).get(tp[1], lows.get(tp, 0)) for tp in tps}
    views = fetch_views(settings, starts, timeout_s)
    now_s = clock()
    rows: list[PartitionLag] = []
    for tp in tps:
        view = views[tp]
        lag = max(0, view.high_watermark - view.start)
        seconds = 0.0
        if lag > 0 and view.first_timestamp_ms is not None:
            seconds = max(0.0, now_s - view.first_timestamp_ms / 1000)
        rows.append(
            PartitionLag(
                topic=tp[0],
                partition=tp[1],
                committed=committed.get(tp[0], {}).get(tp[1]),
                high_watermark=view.high_watermark,
                lag_messages=lag,
                lag_seconds=round(seconds, 3),
                next_timestamp_ms=view.first_timestamp_ms if lag > 0 else None,
            )
        )
    return GroupLag(group, info.state, info.member_count, now_s, tuple(rows))


def consumed_topics(settings: Settings) -> list[str]:
    """Every topic a worker consumes: the lanes (main, critical, bulk) and the retry tiers."""
    names = TopicNames.from_settings(settings)
    return [t for t in names.all if t != names.dlt]


# --- status over a window of samples (pure) --------------------------------------------------


class Status(IntEnum):
    """Burrow's partition statuses, ordered by severity."""

    OK = 0
    WARN = 1  # lag growing over the window while the consumer commits
    ERR = 2  # STALL: the committed offset does not move while there is lag
    STOP = 3  # nobody commits: no live member, or no commit for ``stop_after_s``


@dataclass(frozen=True, slots=True)
class LagSample:
    at_s: float
    committed: int | None
    lag: int  # messages
    members: int | None = None  # live members of the group when sampled (None: unknown)


@dataclass(frozen=True, slots=True)
class StatusPolicy:
    window: int = 10  # samples considered for stall and growth
    min_samples: int = 3  # fewer samples than this: no trend is judged
    stop_after_s: float = 120.0  # committed offset unchanged this long with lag: STOP


@dataclass(frozen=True, slots=True)
class Evaluation:
    status: Status
    reason: str


def evaluate_status(
    samples: Sequence[LagSample], policy: StatusPolicy = StatusPolicy()
) -> Evaluation:
    """Status of one partition from its samples (oldest first); time is the samples' own.

    In order: caught up now -> OK; no live member, or the committed offset unchanged for
    ``stop_after_s`` while lagging -> STOP; caught up at any point in the window -> OK; with
    at least ``min_samples`` in the window, the committed offset unchanged across it while
    lagging -> ERR (stall); lag never shrinking across it and grown -> WARN; else OK.
    """
    if not samples:
        raise ValueError("no samples")
    last = samples[-1]
    if last.lag == 0:
        return Evaluation(Status.OK, "caught up")
    if last.members == 0:
        return Evaluation(Status.STOP, f"no live member; lag {last.lag}")
    unchanged_since = last.at_s
    for sample in reversed(samples):
        if sample.committed != last.committed:
            break
        unchanged_since = sample.at_s
    idle_s = last.at_s - unchanged_since
    if idle_s >= policy.stop_after_s:
        return Evaluation(
            Status.STOP, f"committed offset {last.committed} unchanged for {idle_s:.0f}s"
        )
    window = samples[-policy.window :]
    if any(s.lag == 0 for s in window):
        return Evaluation(Status.OK, "caught up within the window")
    if len(window) >= policy.min_samples:
        if all(s.committed == last.committed for s in window):
            return Evaluation(
                Status.ERR,
                f"STALL: committed offset {last.committed} not moving, lag {last.lag}",
            )
        lags = [s.lag for s in window]
        if all(b >= a for a, b in pairwise(lags)) and lags[-1] > lags[0]:
            return Evaluation(Status.WARN, f"lag growing: {lags[0]} -> {lags[-1]}")
    return Evaluation(Status.OK, "consuming")


@dataclass
class LagHistory:
    """Samples per partition across refreshes, bounded, feeding :func:`evaluate_status`."""

    policy: StatusPolicy = field(default_factory=StatusPolicy)
    max_samples: int = 1000
    _samples: dict[TP, deque[LagSample]] = field(default_factory=dict)

    def add(self, measurement: GroupLag) -> None:
        for p in measurement.partitions:
            samples = self._samples.setdefault(
                (p.topic, p.partition), deque(maxlen=self.max_samples)
            )
            samples.append(
                LagSample(measurement.at_s, p.committed, p.lag_messages, measurement.members)
            )

    def evaluate(self, topic: str, partition: int) -> Evaluation:
        return evaluate_status(list(self._samples[(topic, partition)]), self.policy)

    def worst(self, measurement: GroupLag) -> Status:
        return max(
            (self.evaluate(p.topic, p.partition).status for p in measurement.partitions),
            default=Status.OK,
        )


def lag_document(measurement: GroupLag, history: LagHistory) -> dict[str, Any]:
    """The machine-readable form printed by ``recon lag --json``."""
    partitions = []
    for p in measurement.partitions:
        evaluation = history.evaluate(p.topic, p.partition)
        partitions.append(
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "high_watermark": p.high_watermark,
                "lag_messages": p.lag_messages,
                "lag_seconds": p.lag_seconds,
                "status": evaluation.status.name,
                "reason": evaluation.reason,
            }
        )
    topics = sorted({p.topic for p in measurement.partitions})
    return {
        "group": measurement.group,
        "state": measurement.state,
        "members": measurement.members,
        "measured_at_ms": int(measurement.at_s * 1000),
        "status": history.worst(measurement).name,
        "totals": {
            t: {
                "lag_messages": measurement.total(t),
                "max_lag_seconds": max(
                    (p.lag_seconds for p in measurement.partitions if p.topic == t), default=0.0
                ),
            }
            for t in topics
        },
        "partitions": partitions,
    }
