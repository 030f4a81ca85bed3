"""Summarise a py-spy ``--format raw`` profile of a worker into where the time goes.

    python -m bench.profile_summary bench/profiles/profile-d--recon-worker--memory.txt

Each sample is put in one category by the frames on its stack (first match wins, in the order
below); samples idle in ``select``, in an executor's queue or in a thread wait are counted
apart. Shares are of the busy samples. Used for docs/performance.md.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE_LEAVES = (
    "select (selectors.py",
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
)

# (category, any of these substrings on the stack)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ours: Avro decode + validation", ("AvroCodec.decode",)),
    ("ours: apply (reconciler + sink)", ("Reconciler.reconcile", "MemorySink", "SqliteSink")),
    ("ours: per-record Prometheus metrics", ("prometheus_client",)),
    ("serving /metrics (the bench's scrapes)", ("socketserver", "http/server")),
    (
        "ours: batch bookkeeping (records, lanes, outcomes)",
        ("BatchProcessor", "LaneProcessor", "LaneStats", "settle_batch", "source_record"),
    ),
    ("aiokafka: fetch + record parsing (consumer thread)", ("aiokafka",)),
    ("fast path: bulk drain, SourceRecord building, acks", ("BulkConsumer",)),
    (
        "Faust per-message delivery (wait_first, conductor, stream, events, acks)",
        ("_drain_messages", "conductor", "faust/", "wait_first"),
    ),
    ("asyncio scheduling (tasks, handles)", ("asyncio",)),
)


def summarise(path: Path) -> tuple[int, int, Counter[str]]:
    shares: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.rsplit(";", 1)[-1]
        if any(marker in leaf for marker in IDLE_LEAVES):
            idle += n
            continue
        busy += n
        category = next(
            (name for name, markers in CATEGORIES if any(m in stack for m in markers)), "other"
        )
        shares[category] += n
    return busy, idle, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    for path in parser.parse_args().profiles:
        busy, idle, shares = summarise(path)
        total = busy + idle
        print(f"== {path.name}: {busy} busy samples, {idle} idle ({100 * idle / total:.0f}%)")
        for name, n in shares.most_common():
            print(f"{100 * n / busy:5.1f}%  {name}")


if __name__ == "__main__":
    main()
