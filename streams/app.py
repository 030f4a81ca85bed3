"""The Faust app: one agent for the main topic, one per retry tier.

Faust is used for what it does well -- consumer groups, partition assignment, acking and
offset commits -- and every record is handed to :class:`BatchProcessor` in batches
(``take_events``) so nothing escapes to Faust's "ack on error" path.

What we set deliberately:
* raw key/value serializers: decoding is ours (Avro single-object), so an undecodable record
  becomes a routed failure instead of a Faust deserialization error;
* no tables and no leader topic: the sink is the system of record (Faust table recovery
  reads changelogs up to a ListOffsets end offset that the embedded broker gets wrong);
* short session/rebalance timeouts (Settings) so joins and failovers take seconds;
* ``consumer_auto_offset_reset=earliest``: a new group starts at the beginning
  (``latest`` relies on ListOffsets too).
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
from prometheus_client import Histogram

from processors.codec import AvroCodec
from processors.reconciler import Reconciler
from processors.sinks import open_sink
from streams.backpressure.controller import Backpressure
from streams.backpressure.lanes import Lane
from streams.batch_processor import BatchProcessor, ProcessingPolicy
from streams.failpoints import Failpoints
from streams.failures.circuit import CircuitBreaker, CircuitPolicy
from streams.failures.entity_order import Scanned
from streams.failures.ordering import EntityOrdering
from streams.failures.retry_budget import RetryBudget, RetryBudgetPolicy
from streams.failures.retry_schedule import process_when_due
from streams.failures.routing import OutgoingRecord, SourceRecord
from streams.kafka.client_config import faust_credentials
from streams.kafka.fast_consumer import register_bulk_topic, use_fast_path
from streams.kafka.fetch_wait import set_fetch_max_wait
from streams.kafka.retry_scan import require_copartitioned, scan_retry_tiers
from streams.ops import metrics
from streams.ops.worker_health import WorkerOps
from streams.settings import Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)

retry_lateness_seconds = Histogram(
    "recon_retry_lateness_seconds",
    "How late after its due time a retry record was processed",
    ["tier"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
    registry=metrics.REGISTRY,
)


def faust_app_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` derived from our settings."""
    return {
        "broker": f"kafka://{settings.bootstrap_servers.replace(',', ';kafka://')}",
        "broker_credentials": faust_credentials(settings),
        "value_serializer": "raw",
        "key_serializer": "raw",
        "web_enabled": False,
        "topic_disable_leader": True,
        "autodiscover": False,
        "datadir": str(Path(tempfile.gettempdir()) / f"recon-faust-{settings.group}"),
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "broker_commit_interval": settings.commit_interval_s,
        "broker_commit_every": settings.commit_every,
        "producer_acks": -1,
        # Do not wait for streams to drain before a rebalance or a stop: a batch held by an
        # open circuit (or the retry budget) would block either forever. Held work is
        # abandoned instead, unacked (see settle_batch), and redelivered to whoever owns the
        # partition next; idempotent apply makes the redelivery harmless.
        "stream_wait_empty": False,
    }


def source_record(event: Any) -> SourceRecord:
    """Our view of a Faust event's message."""
    message = event.message
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int((message.timestamp or 0) * 1000),
        key=message.key,
        value=message.value,
        headers=tuple((str(k), bytes(v or b"")) for k, v in headers),
    )


class ReconApp(faust.App):
    """faust.App with two hooks: after start (metrics, producer) and after stop (sink)."""

    recon_on_started: Callable[[], Awaitable[None]] | None = None
    recon_on_stopped: Callable[[], None] | None = None

    async def on_started(self) -> None:
        await super().on_started()
        if self.recon_on_started is not None:
            await self.recon_on_started()

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.recon_on_stopped is not None:
            self.recon_on_stopped()


async def settle_batch(
    app: faust.App, events: Sequence[Any], work: Callable[[list[SourceRecord]], Awaitable[object]]
) -> None:
    """Run ``work`` on a batch from ``stream.take_events`` and ack its records only if it
    completes.

    ``take_events`` acks every event of a batch in a ``finally`` -- also when the agent body
    is cancelled (a stop) or raises -- and Faust then commits those offsets: records that
    were never settled would be lost. So the worker holds one more reference on each
    message while it works: the stream's ack then only drops that count to one, and the
    offset is committed only after this function's own ack, once ``work`` has returned.
    """
    messages = [event.message for event in events]
    for message in messages:
        message.incref()
    try:
        await work([source_record(event) for event in events])
    except BaseException:
        log.warning("batch of %d records abandoned unacked; it will be redelivered", len(events))
        raise
    for message in messages:
        message.ack(app.consumer)


def create_app(settings: Settings) -> ReconApp:
    """Build the worker's Faust app with its agents (not started)."""
    topics = TopicNames.from_settings(settings)
    app = ReconApp(settings.group, **faust_app_options(settings))
    if settings.fast_path:
        use_fast_path(app)  # before anything creates the app's transport
    sink_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-sink")
    sink = open_sink(settings.sink_url)
    codec = AvroCodec(settings.event_limits)

    async def send(record: OutgoingRecord) -> Awaitable[object]:
        fut: Awaitable[object] = await app.producer.send(
            record.topic,
            key=record.key,
            value=record.value,
            partition=record.partition,
            timestamp=None,
            headers=list(record.headers),
        )
        return fut

    # Per-entity ordering through the retry tiers (off by default; streams/failures/ordering.py).
    ordering = _entity_ordering(app, settings, topics) if settings.entity_ordering else None
    processor = BatchProcessor(
        reconciler=Reconciler(sink),
        codec=codec,
        send=send,
        topics=topics,
        policy=ProcessingPolicy(
            retry_delays=settings.retry_delays,
            retry_jitter=settings.retry_jitter,
            inline_attempts=settings.inline_attempts,
            inline_backoff_s=settings.inline_backoff_s,
            inline_backoff_max_s=settings.inline_backoff_max_s,
            permanent_classes=settings.permanent_errors,
        ),
        circuit=CircuitBreaker(
            CircuitPolicy(
                window_s=settings.circuit_window_s,
                min_calls=settings.circuit_min_calls,
                failure_threshold=settings.circuit_failure_threshold,
                open_s=settings.circuit_open_s,
                max_open_s=settings.circuit_max_open_s,
                probe_records=settings.circuit_probe_records,
                enabled=settings.circuit_enabled,
            )
        ),
        budget=RetryBudget(
            RetryBudgetPolicy(
                ratio=settings.retry_budget_ratio,
                window_s=settings.retry_budget_window_s,
                floor=settings.retry_budget_floor,
                enabled=settings.retry_budget_enabled,
            )
        ),
        sink_executor=sink_executor,
        rng=random.Random(),
        failpoints=Failpoints(settings.failpoint),
        ordering=ordering,
    )
    # Health (/healthz, /readyz), lag gauges and the ops endpoint; fed after each batch.
    ops = WorkerOps(app, settings)

    async def process(records: Sequence[SourceRecord]) -> None:
        await processor.process(records)
        ops.processed(records)

    # Adaptive backpressure (streams/backpressure/controller.py): every agent's batch goes
    # through it.
    backpressure = Backpressure(app, settings, processor, topics, process)

    async def process_normal(records: Sequence[SourceRecord]) -> None:
        await backpressure.process(Lane.NORMAL, records)

    main_topic = app.topic(topics.main, key_serializer="raw", value_serializer="raw")
    if settings.fast_path:
        # The agent below keeps the topic subscribed; its records bypass the stream.
        register_bulk_topic(app, topics.main, process_normal, settings.batch_max)

    @app.agent(main_topic, name="recon-main")
    async def consume_main(stream: Any) -> None:
        take = backpressure.take_max
        async for events in stream.take_events(take, within=settings.batch_within_s):
            await settle_batch(app, events, process_normal)

    for lane in (Lane.CRITICAL, Lane.BULK):  # priority lanes beside the main (normal) topic
        lane_topic = topics.lane_topic(lane)
        app.agent(
            app.topic(lane_topic, key_serializer="raw", value_serializer="raw"),
            name=f"recon-{lane.value}",
        )(_lane_agent(app, settings, backpressure, lane))
        if settings.fast_path:
            register_bulk_topic(
                app, lane_topic, _lane_handler(backpressure, lane), settings.batch_max
            )

    for tier, name in enumerate(topics.retries, start=1):
        app.agent(
            app.topic(name, key_serializer="raw", value_serializer="raw"),
            name=f"recon-retry-{tier}",
        )(_retry_agent(app, settings, backpressure.process_retry, tier))

    async def on_started() -> None:
        if ordering is not None:  # refuse the option if the topics are not co-partitioned
            await asyncio.to_thread(require_copartitioned, settings, topics.all[:-1])
        metrics.build_info.info({"version": _version(), "group": settings.group})
        await ops.start()
        await backpressure.start()
        set_fetch_max_wait(app, settings.fetch_max_wait_ms)
        await app.maybe_start_producer()
        log.info("recon worker: group=%s topics=%s sink=%s", settings.group, topics.all, sink)

    def on_stopped() -> None:
        ops.stop()
        backpressure.stop()
        sink_executor.submit(sink.close).result(timeout=10)
        sink_executor.shutdown(wait=True)

    app.recon_on_started = on_started
    app.recon_on_stopped = on_stopped
    return app


def _lane_handler(
    backpressure: Backpressure, lane: Lane
) -> Callable[[Sequence[SourceRecord]], Awaitable[None]]:
    async def process(records: Sequence[SourceRecord]) -> None:
        await backpressure.process(lane, records)

    return process


def _entity_ordering(app: faust.App, settings: Settings, topics: TopicNames) -> EntityOrdering:
    async def scan(partitions: Sequence[int]) -> list[Scanned]:
        return await asyncio.to_thread(scan_retry_tiers, settings, topics.retries, partitions)

    ordering = EntityOrdering(topics, scan, tiers=len(topics.retries))
    ordering.attach(app)
    return ordering


def _lane_agent(
    app: faust.App, settings: Settings, backpressure: Backpressure, lane: Lane
) -> Callable[[Any], Awaitable[None]]:
    process = _lane_handler(backpressure, lane)

    async def consume_lane(stream: Any) -> None:
        take = backpressure.take_max
        async for events in stream.take_events(take, within=settings.batch_within_s):
            await settle_batch(app, events, process)

    return consume_lane


def _retry_agent(
    app: faust.App,
    settings: Settings,
    process: Callable[[Sequence[SourceRecord]], Awaitable[None]],
    tier: int,
) -> Callable[[Any], Awaitable[None]]:
    lateness = retry_lateness_seconds.labels(str(tier))

    async def when_due(records: Sequence[SourceRecord]) -> None:
        await process_when_due(
            records,
            process,
            clock_ms=lambda: int(time.time() * 1000),
            on_lateness=lateness.observe,
        )

    async def consume_retry(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            await settle_batch(app, events, when_due)

    return consume_retry


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recon-streams")
    except PackageNotFoundError:
        return "unknown"


def run_worker(settings: Settings) -> None:
    """Run one worker in the foreground until SIGTERM/SIGINT (Faust handles the signals)."""
    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level.lower().replace("warning", "warn"),
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
