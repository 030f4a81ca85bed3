"""The governor's signals, collected in the worker, and the tick that applies its decision.

Signals (docs/backpressure.md has the why of each):

* apply latency -- :class:`ApplyTimer` is the batch processor's apply observer: it runs every
  sink call in the sink thread and times it there (service time, not the wait for the thread);
  the age of the call still running is a lower bound of its latency, so a stalled downstream
  shows before its first slow call returns;
* downstream failures -- the same calls, failed or not;
* in-flight records -- the limiter's permits in use, and their peak over the tick;
* consumer lag -- ``app.consumer.highwater(tp)`` (the high watermark of the last *fetch*
  response; ListOffsets is wrong on the embedded broker) minus the next offset to process;
* event-loop lag -- how late the tick's own ``asyncio.sleep`` returns;
* process CPU and RSS -- psutil.

:class:`SignalCollector` runs as an asyncio task from ``ReconApp.on_started``: every
``governor_tick_s`` it feeds the governor, enforces the decision (limiter, paused partitions),
exports metrics, logs each state change with its reason, and appends a line to the trace file
if ``governor_trace_path`` is set.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
from faust.sensors import Sensor

from processors.apply_rules import Outcome
from processors.event import ReconEvent
from streams.backpressure.governor import STATE_CODES, Decision, Governor, TickSignals, Transition
from streams.backpressure.lane_control import InFlightLimiter, LaneProcessor, PartitionPauser
from streams.backpressure.lanes import ALL_LANES, LANES, Lane
from streams.failures.routing import SourceRecord
from streams.ops import metrics
from streams.topics import TopicNames

log = logging.getLogger(__name__)

E2E_SAMPLES_PER_TICK = 50  # per lane, in the trace


@dataclass(frozen=True, slots=True)
class ApplySample:
    at: float  # time.monotonic() when the call ended
    latency_s: float
    records: int
    failed: bool


class ApplyTimer:
    """Times downstream apply calls in the thread that makes them (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}
        self._done: deque[ApplySample] = deque(maxlen=100_000)

    def run(
        self, reconcile: Callable[[list[ReconEvent]], list[Outcome]], events: list[ReconEvent]
    ) -> list[Outcome]:
        ident = threading.get_ident()
        started = self._clock()
        with self._lock:
            self._running[ident] = started
        failed = True
        try:
            outcomes = reconcile(events)
            failed = False
            return outcomes
        finally:
            ended = self._clock()
            with self._lock:
                self._running.pop(ident, None)
                self._done.append(ApplySample(ended, ended - started, len(events), failed))

    def drain(self) -> list[ApplySample]:
        with self._lock:
            samples = list(self._done)
            self._done.clear()
        return samples

    def pending_since(self) -> float | None:
        """Start of the oldest call still running (``clock`` time), or None."""
        with self._lock:
            starts = list(self._running.values())
        return min(starts) if starts else None

    def pending_age(self, now: float) -> float | None:
        """Age of the oldest call still running, or None."""
        since = self.pending_since()
        return max(0.0, now - since) if since is not None else None


class ReceivedSensor(Sensor):
    """Records Faust hands to the streams, per lane topic: how many (what was really fetched
    and delivered), and the next offset after the last one delivered per partition (where a
    paused partition is rewound to before it resumes; reset at each assignment)."""

    def __init__(self, topics: TopicNames, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lane_of = topics.lane_of
        self.received: Counter[Lane] = Counter()
        self.redelivered: Counter[Lane] = Counter()  # offsets delivered again (after a seek)
        self.next_offset: dict[tuple[str, int], int] = {}

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        lane = self._lane_of(tp.topic)
        if lane is not None:
            self.received[lane] += 1
            key = (tp.topic, tp.partition)
            if offset < self.next_offset.get(key, -1):
                self.redelivered[lane] += 1
            self.next_offset[key] = offset + 1

    def on_records_in(self, tp: Any, offsets: Sequence[int]) -> None:
        """The fast path's bulk hand-out (streams/kafka/fast_consumer.py ``BulkSensor``):
        the same counts as ``on_message_in`` for a chunk of one partition's records."""
        lane = self._lane_of(tp.topic)
        if lane is None or not offsets:
            return
        self.received[lane] += len(offsets)
        key = (tp.topic, tp.partition)
        self.redelivered[lane] += bisect.bisect_left(offsets, self.next_offset.get(key, -1))
        self.next_offset[key] = offsets[-1] + 1

    def reset_offsets(self) -> None:
        self.next_offset.clear()


class LaneStats:
    """Per-lane settled counts and end-to-end latency (record timestamp -> settled)."""

    def __init__(self) -> None:
        self._e2e: dict[Lane, list[float]] = {lane: [] for lane in LANES}
        e2e = metrics.lane_end_to_end_seconds
        self._histograms = {lane: e2e.labels(lane.value) for lane in LANES}
        self._counters = {lane: metrics.lane_records.labels(lane.value) for lane in LANES}

    def settled(self, lane: Lane, records: Sequence[SourceRecord], now_s: float) -> None:
        self._counters[lane].inc(len(records))
        histogram = self._histograms[lane]
        kept = self._e2e[lane]
        for record in records:
            if record.timestamp_ms > 0:
                seconds = max(0.0, now_s - record.timestamp_ms / 1000)
                histogram.observe(seconds)
                if len(kept) < E2E_SAMPLES_PER_TICK:
                    kept.append(seconds)

    def take_e2e(self) -> dict[Lane, list[float]]:
        taken = self._e2e
        self._e2e = {lane: [] for lane in LANES}
        return taken


class TraceWriter:
    """JSON lines, one per tick (``governor_trace_path``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        if self._out is not None:
            self._out.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class SignalCollector:
    """The worker's governor tick (see the module docstring)."""

    def __init__(
        self,
        *,
        app: Any,
        topics: TopicNames,
        governor: Governor | None,
        timer: ApplyTimer,
        lanes: LaneProcessor,
        pauser: PartitionPauser,
        sensor: ReceivedSensor,
        stats: LaneStats,
        tick_s: float,
        trace: TraceWriter | None = None,
    ) -> None:
        self._app = app
        self._topics = topics
        self.governor = governor
        self._timer = timer
        self._lanes = lanes
        self._limiter: InFlightLimiter = lanes.limiter
        self._pauser = pauser
        self._sensor = sensor
        self._stats = stats
        self._tick_s = tick_s
        self._trace = trace
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        self._stopped = False
        self.reassigned = 0
        self.rewinds = 0
        self._seek_marks: dict[tuple[str, int], int] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until stopped (the app cancels this task when it stops)."""
        next_at = time.monotonic() + self._tick_s
        while not self._stopped:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            loop_lag = max(0.0, now - next_at)
            next_at += self._tick_s
            if next_at < now:  # we missed ticks: do not burst to catch up
                next_at = now + self._tick_s
            try:
                await self.tick(now, loop_lag)
            except Exception:  # a bug here must not take the worker down
                log.exception("governor tick failed")

    def stop(self) -> None:
        self._stopped = True
        if self._trace is not None:
            self._trace.close()

    def on_assigned(self) -> None:
        """After a rebalance Faust resumes every assigned partition; our pauses are re-applied
        on the first tick after its recovery completed (:meth:`on_rebalance_complete`)."""
        self.reassigned += 1
        self._pauser.forget()
        self._sensor.reset_offsets()
        self._seek_marks.clear()

    def on_rebalance_complete(self) -> None:
        self._pauser.rebalance_complete()

    # --- one tick ----------------------------------------------------------------------------

    async def tick(self, now: float, loop_lag_s: float) -> dict[str, Any]:
        governor = self.governor
        samples = self._timer.drain()
        for sample in samples:
            if governor is not None:
                governor.observe_apply(sample.latency_s, sample.records, sample.failed, sample.at)
        since = self._timer.pending_since()
        pending = max(0.0, now - since) if since is not None else None
        assignment = self._assignment()
        lag = self._lag(assignment)
        cpu = float(self._process.cpu_percent(None))
        rss = int(self._process.memory_info().rss)
        in_flight = self._limiter.in_use
        peak = self._limiter.take_peak()
        rebalancing = bool(getattr(self._app, "rebalancing", False))
        decision: Decision | None = None
        transitions: list[Transition] = []
        notes: list[str] = []
        if governor is not None:
            decision = governor.tick(
                now,
                TickSignals(
                    in_flight=in_flight,
                    in_flight_peak=peak,
                    consumer_lag=sum(lag.values()),
                    loop_lag_s=loop_lag_s,
                    cpu_percent=cpu,
                    rss_bytes=rss,
                    pending_since=since,
                ),
            )
            transitions = governor.drain_transitions()
            notes = governor.drain_notes()
            self._limiter.update(decision, draining=rebalancing)
            await self._apply_pauses(decision, assignment, rebalancing)
        for transition in transitions:
            log.warning(
                "governor %s -> %s (%s): %s",
                transition.source,
                transition.target,
                transition.reason,
                transition.detail,
            )
            metrics.governor_transitions.labels(
                transition.source.value, transition.target.value, transition.reason
            ).inc()
        for note in notes:
            log.warning("governor: %s", note)
        self._export(decision, lag, peak, loop_lag_s, cpu, rss)
        line = self._line(decision, lag, in_flight, peak, pending, loop_lag_s, cpu, rss)
        assigned: Counter[str] = Counter()
        for tp in assignment:
            lane = self._topics.lane_of(tp.topic)
            if lane is not None:
                assigned[lane.value] += 1
        line["assigned"] = dict(assigned)
        line["rebalancing"] = rebalancing
        if samples:
            latencies = sorted(s.latency_s for s in samples)
            line["apply"] = {
                "n": len(samples),
                "failed": sum(1 for s in samples if s.failed),
                "records": sum(s.records for s in samples),
                "p50_ms": _ms(latencies[len(latencies) // 2]),
                "max_ms": _ms(latencies[-1]),
            }
        line["transitions"] = [
            {"from": t.source.value, "to": t.target.value, "reason": t.reason, "detail": t.detail}
            for t in transitions
        ]
        if notes:
            line["notes"] = notes
        if self._trace is not None:
            self._trace.write(line)
        return line

    async def _apply_pauses(
        self, decision: Decision, assignment: frozenset[Any], rebal: bool
    ) -> None:
        consumer = self._consumer()
        if consumer is None:
            return
        change = await self._pauser.apply(
            consumer, decision.lanes, assignment, rebalancing=rebal, rewind=self._rewind
        )
        if change.paused:
            log.warning(
                "paused %d partitions of stopped lanes: %s",
                len(change.paused),
                sorted(f"{tp.topic}[{tp.partition}]" for tp in change.paused),
            )
        if change.resumed:
            log.warning(
                "resumed %d partitions: %s",
                len(change.resumed),
                sorted(f"{tp.topic}[{tp.partition}]" for tp in change.resumed),
            )

    async def _rewind(self, tp: Any) -> None:
        """Seek ``tp`` to the first record the consumer has not delivered to the streams,
        before resuming it (streams/backpressure/lane_control.py: records a pause drops would
        otherwise be skipped and committed).

        Faust's ``_read_offset[tp]`` (private; read defensively) is the last offset it
        delivered -- or, right after a seek, the next one it expects: a seek of ours, or its
        seek to the committed offset at assignment. So: one past it if a stream took that
        record (our sensor saw it) or if it is neither a seek target of ours nor the committed
        offset; else the offset itself. Never beyond: a record re-delivered is a duplicate
        (idempotent apply; only when the last delivered record is still queued *and* sits at
        such a position), a record skipped would be committed unprocessed.
        """
        consumer = self._consumer()
        key = (tp.topic, tp.partition)
        read_offsets = getattr(consumer, "_read_offset", None)
        read = read_offsets.get(tp) if isinstance(read_offsets, dict) else None
        committed_offsets = getattr(consumer, "_committed_offset", None)
        committed = committed_offsets.get(tp) if isinstance(committed_offsets, dict) else None
        target: int | None = None
        if isinstance(read, int):
            pulled = self._sensor.next_offset.get(key)
            taken = pulled is not None and pulled - 1 >= read
            seek_target = read == self._seek_marks.get(key) or read == committed
            target = read + 1 if taken or not seek_target else read
        elif isinstance(committed, int):
            target = committed
        if consumer is None or target is None:
            log.warning("resuming %s[%d] without a rewind: no position known", *tp)
            return
        log.info("rewinding %s[%d] to %d before resuming it", tp.topic, tp.partition, target)
        await consumer.seek(tp, target)
        self._seek_marks[key] = target
        self.rewinds += 1

    # --- reading the worker ------------------------------------------------------------------

    def _consumer(self) -> Any:
        try:
            return self._app.consumer
        except Exception:
            return None

    def _assignment(self) -> frozenset[Any]:
        consumer = self._consumer()
        if consumer is None:
            return frozenset()
        try:
            return frozenset(consumer.assignment())
        except Exception:  # not started yet, or stopping
            return frozenset()

    def _lag(self, assignment: frozenset[Any]) -> dict[Lane, int]:
        """Per lane: fetch high watermark minus next offset to process, over assigned lane
        partitions whose high watermark and position are known."""
        lag: dict[Lane, int] = dict.fromkeys(LANES, 0)
        consumer = self._consumer()
        if consumer is None:
            return lag
        next_offsets = self._lanes.counters.next_offsets
        committed = getattr(consumer, "_committed_offset", {})  # Faust's; read defensively
        for tp in assignment:
            lane = self._topics.lane_of(tp.topic)
            if lane is None:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                continue
            position = next_offsets.get((tp.topic, tp.partition))
            if position is None:
                value = committed.get(tp) if isinstance(committed, dict) else None
                position = value if isinstance(value, int) else None
            if isinstance(high, int) and position is not None:
                lag[lane] += max(0, high - position)
        return lag

    # --- output ------------------------------------------------------------------------------

    def _export(
        self,
        decision: Decision | None,
        lag: dict[Lane, int],
        peak: int,
        loop_lag_s: float,
        cpu: float,
        rss: int,
    ) -> None:
        running = decision.lanes if decision is not None else ALL_LANES
        for lane in LANES:
            metrics.lane_running.labels(lane.value).set(1 if lane in running else 0)
            metrics.lane_lag_records.labels(lane.value).set(lag[lane])
        metrics.paused_partitions.set(len(self._pauser.paused))
        metrics.in_flight_peak_records.set(peak)
        metrics.event_loop_lag_seconds.set(loop_lag_s)
        metrics.process_cpu_percent.set(cpu)
        metrics.process_rss_bytes.set(rss)
        governor = self.governor
        if governor is None or decision is None:
            metrics.governor_state.set(-1)
            return
        metrics.governor_state.set(STATE_CODES[decision.state])
        metrics.governor_limit.set(decision.limit)
        metrics.governor_batch_size.set(decision.batch_size)
        metrics.governor_pacing_seconds.set(decision.pacing_s)
        stats = governor.stats
        if stats.baseline_s is not None:
            metrics.governor_baseline_seconds.set(stats.baseline_s)
        if stats.p95_s is not None:
            metrics.governor_latency_p95_seconds.set(stats.p95_s)

    def _line(
        self,
        decision: Decision | None,
        lag: dict[Lane, int],
        in_flight: int,
        peak: int,
        pending: float | None,
        loop_lag_s: float,
        cpu: float,
        rss: int,
    ) -> dict[str, Any]:
        line: dict[str, Any] = {
            "t": round(time.time(), 3),
            "state": decision.state.value if decision is not None else "off",
            "level": decision.level if decision is not None else 0,
            "limit": decision.limit if decision is not None else None,
            "batch": decision.batch_size if decision is not None else None,
            "lanes": sorted(lane.value for lane in (decision.lanes if decision else ALL_LANES)),
            "pacing_ms": _ms(decision.pacing_s) if decision is not None else 0.0,
            "in_flight": in_flight,
            "in_flight_peak": peak,
            "pending_ms": _ms(pending),
            "loop_lag_ms": _ms(loop_lag_s),
            "cpu": round(cpu, 1),
            "rss_mb": round(rss / 1_048_576, 1),
            "lag": {lane.value: n for lane, n in lag.items()},
            "processed": {lane.value: self._lanes.counters.processed[lane] for lane in LANES},
            "received": {lane.value: self._sensor.received[lane] for lane in LANES},
            "redelivered": {lane.value: self._sensor.redelivered[lane] for lane in LANES},
            "paused": len(self._pauser.paused),
            "e2e_ms": {
                lane.value: [round(s * 1000, 1) for s in values]
                for lane, values in self._stats.take_e2e().items()
                if values
            },
        }
        if self.governor is not None:
            stats = self.governor.stats
            line.update(
                p50_ms=_ms(stats.p50_s),
                p95_ms=_ms(stats.p95_s),
                tick_ms=_ms(stats.estimate_s),
                baseline_ms=_ms(stats.baseline_s),
                errors=None if stats.error_rate is None else round(stats.error_rate, 3),
                breach=stats.breach,
                run=stats.run,
                run_calls=stats.run_calls,
                probing=stats.probing,
                saturated=stats.saturated,
            )
        return line
