"""Soak: a flood of poison pills and valid events against one worker with a slow downstream,
sampling the worker's resident memory (RSS) every second. ``make soak`` (not part of make test).

    python -m bench.soak [--records 200000] [--max-seconds 180] [--max-rss-mb N] ...

What it does, all on 127.0.0.1 and bounded in count and time:
1. starts the embedded broker and one ``recon worker`` subprocess whose sink is ``sim://`` with
   ``latency_ms`` (50 ms per load and per write: a slow downstream);
2. publishes ``--records`` records as fast as the producer goes (the worker falls far behind,
   so the backlog sits in the broker, not in the worker): synthetic events with
   ``--poison-rate`` poison pills (undecodable, invalid, conflicts) and, every
   ``--big-every``-th record, a ``--big-kib`` KiB blob over the worker's size limit;
3. waits until the worker has settled every record (from its /metrics) or ``--max-seconds``;
4. prints RSS over time and the max, and exits non-zero if the RSS bound is broken
   (1), the worker died (2) or the flood was not drained in time (3).

The bound: max RSS <= ``--max-rss-mb`` and growth after warm-up (max RSS minus the RSS
``--warmup-s`` seconds after the first record was settled) <= ``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from processors.codec import AvroCodec
from processors.synthetic import SyntheticSpec, generate
from streams.broker import EmbeddedBroker, free_port
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics

MIB = 1024 * 1024


@dataclass
class Sample:
    t: float
    rss: int
    settled: int


@dataclass
class Sampler:
    """Samples the worker's RSS and settled-record count once a second, in a thread."""

    pid: int
    metrics_url: str
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self, max_samples: int) -> None:
        proc = psutil.Process(self.pid)
        for _ in range(max_samples):
            if self._stop.wait(1.0):
                return
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                return
            totals = outcome_totals([self.metrics_url])
            settled = sum(totals[o] for o in TERMINAL_OUTCOMES)
            self.samples.append(Sample(time.monotonic() - self.started, rss, settled))

    def stop(self) -> None:
        self._stop.set()


def _flood(args: argparse.Namespace, codec: AvroCodec) -> Iterator[tuple[bytes, bytes]]:
    spec = SyntheticSpec(
        count=args.records,
        entities=args.entities,
        poison_rate=args.poison_rate,
        duplicate_rate=0.05,
        reorder_rate=0.05,
        seed=args.seed,
    )
    blob = b"\xc3\x01" + os.urandom(args.big_kib * 1024 - 2)
    for n, record in enumerate(generate(spec, codec), start=1):
        if args.big_every and n % args.big_every == 0:
            yield record.key.encode(), blob  # over the worker's max_record_bytes
        else:
            yield record.key.encode(), record.value


def _worker_env(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "RECON_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RECON_TOPIC": settings.topic,
        "RECON_GROUP": settings.group,
        "RECON_SINK_URL": settings.sink_url,
        "RECON_METRICS_PORT": str(settings.metrics_port),
        "RECON_PARTITIONS": str(settings.partitions),
        "RECON_MAX_RECORD_BYTES": str(args.max_record_kib * 1024),
        "RECON_LOG_LEVEL": "info",
    }


def _report(sampler: Sampler, first_settled_at: float | None, args: argparse.Namespace) -> int:
    samples = sampler.samples
    print("\n  t(s)   worker RSS (MiB)   settled records")
    step = max(1, len(samples) // 40)
    for s in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        print(f"{s.t:6.0f}   {s.rss / MIB:16.1f}   {s.settled:15d}")
    if not samples:
        print("no samples")
        return 2
    peak = max(s.rss for s in samples)
    warm = [s for s in samples if first_settled_at is not None and s.t >= first_settled_at]
    warm = [s for s in warm if s.t >= warm[0].t + args.warmup_s] if warm else []
    baseline = warm[0].rss if warm else samples[0].rss
    growth = max((s.rss for s in warm), default=baseline) - baseline
    print(
        f"\nworker RSS: max {peak / MIB:.1f} MiB; after warm-up {baseline / MIB:.1f} MiB, "
        f"growth since {growth / MIB:+.1f} MiB "
        f"(bounds: max <= {args.max_rss_mb} MiB, growth <= {args.max_growth_mb} MiB)"
    )
    if peak > args.max_rss_mb * MIB or growth > args.max_growth_mb * MIB:
        print("FAIL: the worker's memory broke its bound")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--poison-rate", type=float, default=0.5)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--big-every", type=int, default=1000, help="0: no big records")
    parser.add_argument("--big-kib", type=int, default=128)
    parser.add_argument("--max-record-kib", type=int, default=64, help="the worker's size limit")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--max-rss-mb", type=float, default=256.0)
    parser.add_argument("--max-growth-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="recon-soak-"))
    run = uuid.uuid4().hex[:6]
    with EmbeddedBroker() as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            topic=f"soak{run}.events",
            group=f"soak{run}",
            partitions=args.partitions,
            sink_url=f"sim://?db={workdir / 'soak.db'}&latency_ms={args.latency_ms}",
            metrics_port=free_port(),
        )
        ensure_topics(settings)
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--no-create-topics"],
                env=_worker_env(settings, args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        sampler = Sampler(worker.pid, metrics_url)
        thread = threading.Thread(
            target=sampler.run, args=(int(args.max_seconds) + 120,), daemon=True
        )
        thread.start()
        code = 0
        first_settled_at: float | None = None
        try:
            print(
                f"soak: {args.records} records ({args.poison_rate:.0%} poison, a "
                f"{args.big_kib} KiB blob every {args.big_every}), downstream latency "
                f"{args.latency_ms:.0f} ms, broker {broker.bootstrap_servers}, logs in {workdir}"
            )
            published_at = time.monotonic()
            flood = _flood(args, AvroCodec(settings.event_limits))
            report = publish(make_producer(settings), settings.topic, flood)
            print(
                f"published {report.published} in {time.monotonic() - published_at:.1f}s "
                f"(failed {report.failed}); waiting for the worker to settle them"
            )
            deadline = time.monotonic() + args.max_seconds
            settled = 0
            while time.monotonic() < deadline:
                if worker.poll() is not None:
                    print(f"FAIL: the worker exited with {worker.returncode}; see {log_path}")
                    code = 2
                    break
                if sampler.samples:
                    last = sampler.samples[-1]
                    settled = last.settled
                    if first_settled_at is None and settled > 0:
                        first_settled_at = last.t
                    if settled >= report.published:
                        break
                time.sleep(1.0)
            else:
                print(f"not drained within {args.max_seconds:.0f}s: {settled}/{report.published}")
                code = 3
            elapsed = time.monotonic() - published_at
            totals = outcome_totals([metrics_url])
            print(
                f"settled {settled}/{report.published} in {elapsed:.0f}s "
                f"({settled / max(elapsed, 1e-9):.0f} records/s): "
                + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
            )
        finally:
            sampler.stop()
            thread.join(timeout=5)
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait(timeout=10)
        print(f"worker log: {log_path.stat().st_size / MIB:.1f} MiB")
        verdict = _report(sampler, first_settled_at, args)
    return code or verdict


if __name__ == "__main__":
    sys.exit(main())
