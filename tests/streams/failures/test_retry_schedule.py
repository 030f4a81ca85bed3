"""Retry-tier records are processed no earlier than their due time (fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.failures.retry_schedule import due_ms, process_when_due
from streams.failures.routing import DUE_MS, SourceRecord


def _record(offset: int, due: int | None) -> SourceRecord:
    headers = () if due is None else ((DUE_MS, str(due).encode()),)
    return SourceRecord("t.retry.1", 0, offset, 0, b"k", b"v", headers)


class FakeClock:
    """Time advances only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now_ms = 1_000_000

    def __call__(self) -> int:
        return self.now_ms


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-5000, 20000)), min_size=1, max_size=30))
def test_nothing_is_processed_before_it_is_due(offsets_due: list[int | None]) -> None:
    clock = FakeClock()
    records = [
        _record(i, None if d is None else clock.now_ms + d) for i, d in enumerate(offsets_due)
    ]
    processed: list[tuple[int, SourceRecord]] = []

    async def process(batch: Sequence[SourceRecord]) -> None:
        processed.extend((clock(), r) for r in batch)

    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        clock.now_ms += max(1, int(seconds * 1000))
        await real_sleep(0)

    async def run() -> None:
        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            await process_when_due(records, process, clock)
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(run())
    assert sorted(r.offset for _, r in processed) == list(range(len(records)))  # each once
    for at, record in processed:
        assert at >= due_ms(record)
        assert at - due_ms(record) <= 1 or due_ms(record) < 1_000_000  # not late either
