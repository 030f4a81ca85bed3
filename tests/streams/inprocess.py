"""The whole apply path in-process, without Kafka: ``BatchProcessor`` with a sink, an inline
sink executor and a sender that records every retry/DLT copy (acked at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from processors.codec import AvroCodec
from processors.reconciler import Reconciler
from processors.sinks.base import Sink
from processors.sinks.memory import MemorySink
from streams.batch_processor import BatchProcessor, BatchResult, ProcessingPolicy
from streams.failures.circuit import CircuitBreaker, CircuitPolicy
from streams.failures.retry_budget import RetryBudget, RetryBudgetPolicy
from streams.failures.routing import DLT_REASON, OutgoingRecord, SourceRecord
from streams.topics import TopicNames

TOPICS = TopicNames("in.events", ("in.events.retry.1",), "in.events.dlt")


class InlineExecutor(Executor):
    """Runs each call at once in the caller's thread (no thread pool to start or leak)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


@dataclass
class CapturingSender:
    """A ``RecordSender`` that keeps every copy; the broker 'acks' immediately."""

    sent: list[OutgoingRecord] = field(default_factory=list)

    async def __call__(self, record: OutgoingRecord) -> asyncio.Future[object]:
        self.sent.append(record)
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    def dead_letters(self) -> list[OutgoingRecord]:
        return [r for r in self.sent if r.topic == TOPICS.dlt]

    @staticmethod
    def reason(record: OutgoingRecord) -> str:
        return dict(record.headers)[DLT_REASON].decode()


@dataclass
class InProcess:
    processor: BatchProcessor
    sender: CapturingSender
    sink: Sink

    def run(self, values: Sequence[bytes | None], keys: Sequence[bytes | None] = ()) -> BatchResult:
        """Process ``values`` as one batch of main-topic records at offsets 0..n-1."""
        records = [
            SourceRecord(
                topic=TOPICS.main,
                partition=0,
                offset=i,
                timestamp_ms=0,
                key=keys[i] if i < len(keys) else None,
                value=value,
            )
            for i, value in enumerate(values)
        ]
        return asyncio.run(self.processor.process(records))


def in_process(codec: AvroCodec, sink: Sink | None = None) -> InProcess:
    store: Sink = sink if sink is not None else MemorySink()
    sender = CapturingSender()
    processor = BatchProcessor(
        reconciler=Reconciler(store),
        codec=codec,
        send=sender,
        topics=TOPICS,
        policy=ProcessingPolicy(
            retry_delays=(1.0,), retry_jitter=0.0, inline_attempts=1, inline_backoff_s=0.0
        ),
        sink_executor=InlineExecutor(),
        circuit=CircuitBreaker(CircuitPolicy(enabled=False)),
        budget=RetryBudget(RetryBudgetPolicy(enabled=False)),
        clock_ms=lambda: 1_000,
    )
    return InProcess(processor, sender, store)
