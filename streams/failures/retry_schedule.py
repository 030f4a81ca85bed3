"""Holding retry-tier records until their due time.

A record on retry tier n carries ``recon.due.ms``; it must not be processed before then. All
records of one tier share one delay (minus jitter), so a tier's records come due roughly in
the order they were written: the agent of a tier takes a batch, processes what is due, and
sleeps until the next due time. The main topic and the other tiers run in their own agents
and keep flowing meanwhile. While a tier sleeps its stream buffer fills and Faust's flow
control stops fetching it, so the wait costs bounded memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from streams.failures.routing import DUE_MS, SourceRecord

DueCallback = Callable[[Sequence[SourceRecord]], Awaitable[object]]


def due_ms(record: SourceRecord) -> int:
    """The record's due time; a record without a readable due header is due now."""
    return record.int_header(DUE_MS) or 0


def split_due(
    records: Sequence[SourceRecord], now_ms: int
) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """(due now, not yet due), each in the input order."""
    ready = [r for r in records if due_ms(r) <= now_ms]
    waiting = [r for r in records if due_ms(r) > now_ms]
    return ready, waiting


async def process_when_due(
    records: Sequence[SourceRecord],
    process: DueCallback,
    clock_ms: Callable[[], int],
    on_lateness: Callable[[float], None] = lambda seconds: None,
) -> None:
    """Call ``process`` on each record no earlier than its due time; return when all are done."""
    pending = list(records)
    while pending:
        now = clock_ms()
        ready, pending = split_due(pending, now)
        if ready:
            for record in ready:
                on_lateness(max(0.0, (now - due_ms(record)) / 1000))
            await process(ready)
            continue
        next_due = min(due_ms(r) for r in pending)
        await asyncio.sleep(max(0.0, (next_due - clock_ms()) / 1000))
