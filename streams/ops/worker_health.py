"""Wiring :class:`WorkerHealth` into a running Faust worker, and the ops endpoint with it.

What feeds it:
* assignment: Faust's ``on_partitions_assigned`` / ``on_partitions_revoked`` signals, and
  a sensor's ``on_rebalance_start`` (the start of a rebalance makes the worker unready at
  once, before the revoke finishes draining the streams);
* progress: the agents call :meth:`WorkerOps.processed` after each settled batch;
* high watermarks: ``app.consumer.highwater(tp)``, i.e. what aiokafka read from the latest
  *fetch* response (ListOffsets is wrong on the embedded broker; see BROKER.md).

A refresh task evaluates it every ``REFRESH_S`` seconds on the event loop, exports the lag
gauges, and publishes the verdict for ``/readyz`` (served from a thread). If the loop stops
refreshing, ``/readyz`` turns unready by itself: the verdict it holds goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from faust.sensors import Sensor
from faust.types import TP as FaustTP

from streams.ops import metrics
from streams.ops.health import ProcessedRecord, Readiness, WorkerHealth
from streams.ops.server import OpsServer, event_loop_liveness
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)

REFRESH_S = 1.0
STALE_AFTER_S = 10.0  # a verdict older than this means the event loop is not refreshing it


class _HealthSensor(Sensor):
    """Rebalance starts and commit latency, from Faust's sensor callbacks."""

    def __init__(self, health: WorkerHealth, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._health = health

    def on_rebalance_start(self, app: Any) -> dict[str, Any]:
        self._health.on_rebalance_start()
        metrics.rebalances.inc()
        return {}

    def on_commit_initiated(self, consumer: Any) -> Any:
        # Faust runs a commit cycle every commit interval, most of them with nothing new to
        # commit; only cycles that moved a committed offset are timed.
        return time.perf_counter(), dict(getattr(consumer, "_committed_offset", {}))

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        started, before = state
        if dict(getattr(consumer, "_committed_offset", {})) != before:
            metrics.commit_latency_seconds.observe(time.perf_counter() - started)


class WorkerOps:
    """Health tracking, lag gauges and the ops HTTP endpoint of one worker."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        topics = TopicNames.from_settings(settings)
        self._retry_topics = frozenset(topics.retries)
        grace = {
            name: delay for name, delay in zip(topics.retries, settings.retry_delays, strict=True)
        }
        self.health = WorkerHealth(
            stall_s=settings.ready_stall_s, grace_s=lambda topic: grace.get(topic, 0.0)
        )
        self._latest: Readiness | None = None
        self._exported: set[tuple[str, int]] = set()
        self._server: OpsServer | None = None
        app.sensors.add(_HealthSensor(self.health))
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)

    # --- feeding -----------------------------------------------------------------------------

    def processed(self, records: Sequence[ProcessedRecord]) -> None:
        retry_topics = self._retry_topics
        in_order = [r for r in records if r.topic not in retry_topics]
        redelivered = self.health.on_processed(in_order)
        if len(in_order) < len(records):
            self.health.on_processed([r for r in records if r.topic in retry_topics])
        if redelivered:
            metrics.records_redelivered.inc(redelivered)

    def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self.health.on_assigned((tp.topic, tp.partition) for tp in assigned)
        metrics.assigned_partitions.set(len(self.health.assignment))

    def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        self.health.on_revoked((tp.topic, tp.partition) for tp in revoked)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve the endpoint and start refreshing (from the app's ``on_started``)."""
        loop = asyncio.get_running_loop()
        self._server = metrics.serve(
            self._settings.metrics_host,
            self._settings.metrics_port,
            liveness=event_loop_liveness(loop),
            readiness=self.readiness,
        )
        self.health.on_started()
        self._app.add_future(self._refresh_forever())

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    # --- evaluation --------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """For ``/readyz`` (called from the HTTP thread: reads one reference, no locking)."""
        latest = self._latest
        if latest is None:
            return False, {"ready": False, "reason": "starting"}
        now = time.monotonic()
        age = now - latest.evaluated_at
        if age > STALE_AFTER_S:
            return False, {
                "ready": False,
                "reason": f"readiness not refreshed for {age:.0f}s (event loop blocked?)",
            }
        return latest.ready, latest.document(now)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # never let a metrics bug take the worker down
                log.exception("health refresh failed")
            await asyncio.sleep(REFRESH_S)

    def refresh(self) -> Readiness:
        readiness = self.health.evaluate(self._highwater, self._committed, self._paused)
        current = set()
        for p in readiness.partitions:
            labels = (p.topic, str(p.partition))
            metrics.consumer_lag_messages.labels(*labels).set(p.lag_messages)
            metrics.consumer_lag_seconds.labels(*labels).set(p.lag_seconds)
            current.add((p.topic, p.partition))
        for topic, partition in self._exported - current:
            for gauge in (metrics.consumer_lag_messages, metrics.consumer_lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition))
        self._exported = current
        metrics.assigned_partitions.set(len(readiness.partitions))
        metrics.ready.set(1 if readiness.ready else 0)
        if self._latest is not None and self._latest.ready != readiness.ready:
            log.info("readiness: %s (%s)", readiness.ready, readiness.reason)
        self._latest = readiness
        return readiness

    def _highwater(self, tp: tuple[str, int]) -> int | None:
        try:
            value = self._app.consumer.highwater(FaustTP(*tp))
        except Exception:  # not assigned (any more) or no consumer yet
            return None
        return int(value) if value is not None else None

    def _paused(self, tp: tuple[str, int]) -> bool:
        # Partitions paused through consumer.pause_partitions (lane control); Faust also
        # pauses everything during a rebalance, when the worker is unready anyway.
        return FaustTP(*tp) in getattr(self._app.consumer, "_paused_partitions", ())

    def _committed(self, tp: tuple[str, int]) -> int | None:
        # Faust's record of the offsets it committed or started from (set by its seek to the
        # committed offsets after each assignment); private, hence the defensive read.
        offsets = getattr(self._app.consumer, "_committed_offset", {})
        value = offsets.get(FaustTP(*tp))
        return int(value) if isinstance(value, int) else None
