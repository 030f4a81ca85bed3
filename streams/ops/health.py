"""A worker's readiness and approximate consumer lag, from what the worker itself sees.

:class:`WorkerHealth` is fed by the worker (assignment, rebalances, processed batches) and
evaluated periodically against the high watermarks the worker's consumer got in its fetch
responses. It has no Kafka or Faust dependency, and time comes from an injected clock, so
the rules are unit-tested directly.

Ready means: started, not in a rebalance, at least one partition assigned, and no assigned
partition *stuck* -- lag > 0 and no progress for ``stall_s`` seconds (plus a per-topic
grace: a retry tier legitimately holds its records until they are due, up to its delay).

Lag here is approximate by design (the exact, group-wide view is ``recon lag``):
messages = high watermark - (last processed offset + 1); before anything was processed on
a partition, the committed offset the consumer started from (else 0, the log start of a
topic nothing was ever deleted from); seconds = now - timestamp of the last processed record
while lagging, else 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TP = tuple[str, int]


class ProcessedRecord(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...


@dataclass(slots=True)
class _Progress:
    next_offset: int | None = None  # one past the last processed record
    last_timestamp_ms: int | None = None
    progress_at: float = 0.0  # monotonic time of the last progress (or of the assignment)


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    topic: str
    partition: int
    position: int | None
    high_watermark: int | None
    lag_messages: int
    lag_seconds: float
    idle_s: float  # seconds since the last progress
    stalled: bool


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str
    evaluated_at: float  # monotonic
    partitions: tuple[PartitionHealth, ...] = ()

    def document(self, now: float | None = None) -> dict[str, Any]:
        """The JSON body of ``/readyz``."""
        age = (time.monotonic() if now is None else now) - self.evaluated_at
        return {
            "ready": self.ready,
            "reason": self.reason,
            "evaluated_s_ago": round(age, 3),
            "assigned_partitions": len(self.partitions),
            "stalled": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "lag_messages": p.lag_messages,
                    "idle_s": round(p.idle_s, 1),
                }
                for p in self.partitions
                if p.stalled
            ],
            "lag_messages": sum(p.lag_messages for p in self.partitions),
        }


@dataclass
class WorkerHealth:
    """Assignment and per-partition progress of one worker; see the module docstring."""

    stall_s: float
    grace_s: Callable[[str], float] = lambda topic: 0.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    started: bool = False
    rebalancing: bool = False
    _progress: dict[TP, _Progress] = field(default_factory=dict)

    # --- feeding (from the worker's event loop) ----------------------------------------------

    def on_started(self) -> None:
        self.started = True

    def on_rebalance_start(self) -> None:
        self.rebalancing = True

    def on_assigned(self, assigned: Iterable[TP]) -> None:
        """The complete new assignment (Kafka's eager protocol: it replaces the old one)."""
        now = self.clock()
        new = set(assigned)
        kept = {tp: p for tp, p in self._progress.items() if tp in new}
        for tp in new - kept.keys():
            kept[tp] = _Progress(progress_at=now)
        for progress in kept.values():
            # A partition kept across a rebalance restarts its stall clock: it was paused.
            progress.progress_at = now
        self._progress = kept
        self.rebalancing = False

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        for tp in revoked:
            self._progress.pop(tp, None)

    def on_processed(self, records: Sequence[ProcessedRecord]) -> int:
        """A settled batch: records whose offsets may now be committed.

        Returns how many of them were settled before in this process (offset below the
        partition's progress): re-deliveries, e.g. after a rewind or a rebalance. Meaningful
        for topics processed in offset order (the lanes), not for the retry tiers.
        """
        now = self.clock()
        redelivered = 0
        for record in records:
            progress = self._progress.get((record.topic, record.partition))
            if progress is None:
                continue  # revoked meanwhile
            if progress.next_offset is not None and record.offset < progress.next_offset:
                redelivered += 1
            if progress.next_offset is None or record.offset + 1 > progress.next_offset:
                progress.next_offset = record.offset + 1
                progress.progress_at = now
                if record.timestamp_ms > 0:
                    progress.last_timestamp_ms = record.timestamp_ms
        return redelivered

    @property
    def assignment(self) -> list[TP]:
        return sorted(self._progress)

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(
        self,
        highwater: Callable[[TP], int | None],
        committed: Callable[[TP], int | None] = lambda tp: None,
        paused: Callable[[TP], bool] = lambda tp: False,
    ) -> Readiness:
        """Lag per assigned partition and the readiness verdict, as of now.

        A partition the worker paused on purpose (lane control shedding a lane under load)
        is not stuck: its stall clock restarts when it is resumed.
        """
        now, wall = self.clock(), self.wall_clock()
        partitions: list[PartitionHealth] = []
        for tp, progress in sorted(self._progress.items()):
            position = progress.next_offset
            if position is None:
                position = committed(tp)
            high = highwater(tp)
            lag = max(0, high - (position or 0)) if high is not None else 0
            if lag == 0 or paused(tp):
                # Nothing to do (or told to wait) is not a stall: the clock starts when lag
                # appears on a partition that is being fetched.
                progress.progress_at = now
            idle = now - progress.progress_at
            seconds = 0.0
            if lag > 0 and progress.last_timestamp_ms is not None:
                seconds = max(0.0, wall - progress.last_timestamp_ms / 1000)
            stalled = lag > 0 and idle > self.stall_s + self.grace_s(tp[0])
            partitions.append(
                PartitionHealth(tp[0], tp[1], position, high, lag, seconds, idle, stalled)
            )
        return Readiness(*self._verdict(partitions), now, tuple(partitions))

    def _verdict(self, partitions: list[PartitionHealth]) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if self.rebalancing:
            return False, "rebalancing"
        if not partitions:
            return False, "no partitions assigned"
        stalled = [p for p in partitions if p.stalled]
        if stalled:
            worst = max(stalled, key=lambda p: p.idle_s)
            return False, (
                f"{len(stalled)} partition(s) stuck: {worst.topic}[{worst.partition}] has lag "
                f"{worst.lag_messages} and no progress for {worst.idle_s:.0f}s"
            )
        return True, f"{len(partitions)} partition(s) assigned, none stuck"
