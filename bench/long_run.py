"""Bounded memory over a long stream: one worker, ``--events`` records, RSS sampled.

    python -m bench.long_run [--events 2000000] [--fast-path on|off|both] [--sink memory://]

Publishes ``--events`` synthetic events once (streamed from the generator, never held in
memory), then runs a real ``recon worker`` per mode over the whole topic, sampling its RSS
every second. Reports RSS at every 10% of the stream, the peak (VmHWM), and the growth from
25% to 100% (least-squares slope of RSS over records settled) in MB per million events --
"flat" when that is under 5 MB per million.
Writes ``bench/results-long.md``. 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.run import (
    MB,
    POLL_S,
    Run,
    create_topic,
    machine,
    produce,
    tail,
    vm_hwm_bytes,
    worker_process,
)
from streams.broker import EmbeddedBroker

RESULTS = Path(__file__).resolve().parent / "results-long.md"
FLAT_MB_PER_MILLION = 5.0


@dataclass
class Trace:
    name: str
    events: int
    seconds: float = 0.0
    peak: int = 0
    points: list[tuple[float, int]] = field(default_factory=list)  # (settled records, RSS)
    error: str = ""

    def rss_at(self, fraction: float) -> int:
        target = fraction * self.events
        for settled, rss in self.points:
            if settled >= target:
                return rss
        return self.points[-1][1] if self.points else 0

    @property
    def growth_mb_per_million(self) -> float:
        """Least-squares slope of RSS over records settled, from 25% of the stream on."""
        points = [(s, r) for s, r in self.points if s >= 0.25 * self.events]
        if len(points) < 3:
            return 0.0
        n = len(points)
        mean_s = sum(s for s, _ in points) / n
        mean_r = sum(r for _, r in points) / n
        var = sum((s - mean_s) ** 2 for s, _ in points)
        if not var:
            return 0.0
        cov = sum((s - mean_s) * (r - mean_r) for s, r in points)
        return cov / var * 1e6 / MB


def run_mode(run: Run, name: str, sink_url: str, env: dict[str, str], workdir: Path) -> Trace:
    expected = sum(run.end_offsets.values())
    trace = Trace(name, expected)
    log = workdir / f"long-{len(name)}-{time.monotonic_ns()}.log"
    with worker_process(run, run.topic, sink_url, log, env) as worker:
        deadline = time.monotonic() + run.args.timeout
        first = 0.0
        next_sample = 0.0
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                trace.error = f"worker exited {worker.proc.returncode}: {tail(log, 300)!r}"
                return trace
            consumed, settled = worker.settled(run.topic)
            now = time.monotonic()
            if consumed and not first:
                first = now
            if first and now >= next_sample:
                trace.points.append((settled, psutil.Process(worker.proc.pid).memory_info().rss))
                trace.peak = max(trace.peak, vm_hwm_bytes(worker.proc.pid))
                next_sample = now + 1.0
            if settled >= expected:
                trace.seconds = now - first
                break
            time.sleep(POLL_S)
        else:
            trace.error = "timeout"
        trace.peak = max(trace.peak, vm_hwm_bytes(worker.proc.pid))
    return trace


def render(args: argparse.Namespace, run: Run, traces: list[Trace], started: str) -> str:
    lines = [
        "# Long-run memory",
        "",
        "Written by `python -m bench.long_run` (docs/performance.md). One run; the machine was",
        "shared with other work while it ran.",
        "",
        f"- date: {started}",
        *[f"- {k}: {v}" for k, v in machine()],
        f"- data: {sum(run.end_offsets.values()):,} events over {len(run.end_offsets)} "
        f"partitions, {run.avg_bytes:.0f} bytes on average, {args.entities:,} entities; "
        f"sink {args.sink}",
        f"- command: `python -m bench.long_run {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| worker | events/s | RSS (MB) at 10%, 20%, ... 100% of the stream | peak RSS (MB) "
        "| growth 25%->100% (MB per 1M events) | verdict |",
        "|---|---:|---|---:|---:|---|",
    ]
    for t in traces:
        if t.error:
            lines.append(f"| {t.name} | failed: {t.error} |  |  |  |  |")
            continue
        rss = ", ".join(f"{t.rss_at(i / 10) / MB:.0f}" for i in range(1, 11))
        growth = t.growth_mb_per_million
        verdict = "flat" if growth < FLAT_MB_PER_MILLION else "GROWING"
        lines.append(
            f"| {t.name} | {t.events / t.seconds:,.0f} | {rss} | {t.peak / MB:.0f} "
            f"| {growth:+.1f} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--sink", default="memory://")
    parser.add_argument("--fast-path", choices=("on", "off", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per worker, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file ('-': none)")
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix="recon-long-"))
    modes = {"off": [("recon worker", "0")], "on": [("recon worker, fast path", "1")]}
    modes["both"] = modes["off"] + modes["on"]
    with EmbeddedBroker() as broker:
        topic = "bench.long"
        create_topic(broker.bootstrap_servers, topic, args.partitions)
        sizes: list[int] = []
        t0 = time.monotonic()
        report = produce(
            broker.bootstrap_servers,
            topic,
            args.events,
            entities=args.entities,
            seed=3,
            sizes=sizes,
        )
        print(f"published {report.published:,} events in {time.monotonic() - t0:.0f}s", flush=True)
        run = Run(
            args,
            broker.bootstrap_servers,
            topic,
            dict(report.end_offsets),
            entities=args.entities,
            avg_bytes=sum(sizes) / len(sizes) if sizes else 150.0,
        )
        traces = []
        for name, flag in modes[args.fast_path]:
            trace = run_mode(run, name, args.sink, {"RECON_FAST_PATH": flag}, workdir)
            traces.append(trace)
            print(
                f"  {name}: {trace.error or 'done'}; peak {trace.peak / MB:.0f} MB; growth "
                f"{trace.growth_mb_per_million:+.1f} MB per 1M events",
                flush=True,
            )
    text = render(args, run, traces, started)
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}")
    return 0 if all(not t.error for t in traces) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
