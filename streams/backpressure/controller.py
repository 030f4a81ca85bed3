"""Adaptive backpressure in a worker: the governor, the lanes and the signal task, wired.

``streams/app.py`` builds one :class:`Backpressure` per worker and routes every agent's batch
through it: ``process(lane, records)`` for the lane topics, ``process_retry(records)`` for the
shared retry tiers. With ``governor_enabled`` off it still counts and traces (so a run with
the policy off can be compared), but admits everything at once and never pauses anything:
batches of ``batch_max`` exactly as before the governor.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.backpressure.governor import Governor, GovernorPolicy
from streams.backpressure.lane_control import InFlightLimiter, LaneProcessor, PartitionPauser
from streams.backpressure.lanes import Lane
from streams.backpressure.signals import (
    ApplyTimer,
    LaneStats,
    ReceivedSensor,
    SignalCollector,
    TraceWriter,
)
from streams.batch_processor import BatchProcessor
from streams.failures.routing import SourceRecord
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)

Process = Callable[[Sequence[SourceRecord]], Awaitable[object]]


def policy_from_settings(settings: Settings) -> GovernorPolicy:
    """``GovernorPolicy`` from the ``governor_*`` settings (same names without the prefix)."""
    values = {
        f.name: getattr(settings, f"governor_{f.name}") for f in dataclasses.fields(GovernorPolicy)
    }
    return GovernorPolicy(**values)


class Backpressure:
    def __init__(
        self,
        app: Any,
        settings: Settings,
        processor: BatchProcessor,
        topics: TopicNames,
        process: Process,
    ) -> None:
        self._app = app
        self.settings = settings
        self.enabled = settings.governor_enabled
        self.policy = policy_from_settings(settings)
        self.timer = ApplyTimer()
        processor.apply_observer = self.timer
        self.limiter = InFlightLimiter()
        self.stats = LaneStats()
        self.lanes = LaneProcessor(
            process,
            topics,
            self.limiter,
            on_settled=self.stats.settled,
            keep_entity_order=settings.entity_ordering,
        )
        self.pauser = PartitionPauser(topics)
        self.sensor = ReceivedSensor(topics)
        app.sensors.add(self.sensor)
        self.collector: SignalCollector | None = None
        self._topics = topics
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    @property
    def take_max(self) -> int:
        """Records an agent takes from its stream at once (the governor chunks them)."""
        if not self.enabled:
            return self.settings.batch_max
        return max(self.settings.batch_max, self.policy.batch_max)

    async def process(self, lane: Lane, records: Sequence[SourceRecord]) -> None:
        await self.lanes.process(lane, records)

    async def process_retry(self, records: Sequence[SourceRecord]) -> None:
        await self.lanes.process_retry(records)

    async def start(self) -> None:
        """From the app's ``on_started``: begin ticking."""
        governor = Governor(self.policy, time.monotonic()) if self.enabled else None
        if governor is not None:
            self.limiter.update(governor.decision)
        path = self.settings.governor_trace_path
        self.collector = SignalCollector(
            app=self._app,
            topics=self._topics,
            governor=governor,
            timer=self.timer,
            lanes=self.lanes,
            pauser=self.pauser,
            sensor=self.sensor,
            stats=self.stats,
            tick_s=self.policy.tick_s,
            trace=TraceWriter(path) if path else None,
        )
        self._app.add_future(self.collector.run())
        log.info(
            "backpressure governor %s (limit %d..%d, tick %.2fs%s)",
            "on" if self.enabled else "off",
            self.policy.limit_min,
            self.policy.limit_max,
            self.policy.tick_s,
            f", trace {path}" if path else "",
        )

    def stop(self) -> None:
        if self.collector is not None:
            self.collector.stop()

    def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        if self.collector is not None:
            self.collector.on_assigned()

    def _on_rebalance_complete(self, sender: Any, **kwargs: Any) -> None:
        if self.collector is not None:
            self.collector.on_rebalance_complete()
