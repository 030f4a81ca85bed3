"""``make bench``: one embedded broker, one data set, every contender on it, one table.

Steps (one run, everything measured within it so the ratios are comparable even on a noisy
machine):

1. start an embedded broker (Tansu) on a free port and publish ``--events`` synthetic,
   Avro-encoded events over ``--partitions`` partitions once, with ``streams.publish``;
2. each contender consumes the whole topic from the start with its own consumer group, in its
   own process: (a) a raw confluent-kafka loop, (b) a plain Faust agent, (c) a Quix Streams app
   (when ``quixstreams`` is importable), (d) a real ``recon worker`` per sink -- and, when
   ``streams.kafka.fast_consumer`` exists, the same workers with ``RECON_FAST_PATH=1``;
3. events/s = records / (time the first record reached the contender's code -> time the last
   one was processed; for a worker: -> every record of the topic settled, per its /metrics);
   peak RSS = the contender process's ``VmHWM``;
4. end-to-end latency of the worker (memory sink) at half the max rate it just reached:
   events are produced at that pace for ``--latency-seconds`` and the quantiles come from the
   worker's ``recon_end_to_end_latency_seconds`` histogram (record timestamp -> batch settled);
5. print the table and write it, with the machine's description, to ``bench/results.md``.

Traffic goes only to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import ContenderResult, vm_hwm_bytes
from processors.codec import AvroCodec
from processors.event import EventLimits
from processors.synthetic import SyntheticSpec, generate
from streams.broker import EmbeddedBroker, broker_binary, free_port
from streams.kafka.offsets import committed_offsets
from streams.ops.observe import scrape
from streams.publish import PublishReport, make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.md"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Pads the synthetic events' ``source`` so the average record is ~150 bytes.
SOURCE = "bench-upstream-ledger-" + "0" * 24
SETTLED = ("applied", "duplicate", "stale", "dead_lettered", "retried")
MB = 1024 * 1024
# How often the bench scrapes a worker's /metrics while timing it. A scrape costs the worker
# ~5-10 ms of CPU, so: often before the first record and near the end (timing error <= 2 x
# POLL_FINE_S), rarely in between (under 2% of the worker's CPU).
POLL_S = 0.5
POLL_FINE_S = 0.05


def poll_interval(settled: float, expected: int, started: bool) -> float:
    return POLL_FINE_S if not started or settled >= 0.9 * expected else POLL_S


# --- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    events: int = 0
    seconds: float = 0.0
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    note: str = ""
    ok: bool = True

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / self.events * 1e6 if self.events else 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.ok and self.seconds > 0 else 0.0


@dataclass
class Latency:
    name: str
    rate: float
    samples: int
    p50_s: float
    p99_s: float
    p99_bucket: tuple[float, float] | None  # None: exact quantiles (per-record samples)
    note: str = ""


@dataclass
class Run:
    args: argparse.Namespace
    bootstrap: str
    topic: str
    end_offsets: dict[int, int]
    entities: int
    avg_bytes: float
    rows: list[Row] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = ""
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        raw = self.raw
        ratio = f"{row.rate / raw.rate:.3f}x raw" if raw and raw.rate and row.ok else "-"
        print(
            f"  {row.name:<34} {row.rate:>10,.0f} ev/s  {ratio:>11}  "
            f"{row.cpu_us_per_event:6.1f} CPU-us/ev  "
            f"peak RSS {row.peak_rss / MB:7.1f} MB  {row.note}",
            flush=True,
        )

    @property
    def raw(self) -> Row | None:
        return next((r for r in self.rows if r.name.startswith("(a)")), None)


# --- process helpers -------------------------------------------------------------------------


class PeakSampler:
    """Samples a child's RSS (psutil) and VmHWM every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.max_rss = 0
        self.hwm = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        try:
            rss = psutil.Process(self.pid).memory_info().rss
        except psutil.Error:
            return
        self.max_rss = max(self.max_rss, rss)
        self.hwm = max(self.hwm, vm_hwm_bytes(self.pid))
        self.samples.append((time.time(), rss))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    @property
    def peak(self) -> int:
        return max(self.max_rss, self.hwm)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


# --- the data --------------------------------------------------------------------------------


def produce(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    entities: int,
    seed: int,
    rate: float | None = None,
    keys: set[str] | None = None,
    sizes: list[int] | None = None,
) -> PublishReport:
    """Publish ``count`` synthetic events (duplicates, reordering, 0.1% poison) to ``topic``."""
    codec = AvroCodec(EventLimits())
    spec = SyntheticSpec(count=count, entities=entities, seed=seed, source=SOURCE)

    def records() -> Iterator[tuple[bytes, bytes]]:
        for record in generate(spec, codec):
            if keys is not None and record.poison is None:
                keys.add(record.key)
            if sizes is not None:
                sizes.append(len(record.value))
            yield record.key.encode(), record.value

    settings = Settings(bootstrap_servers=bootstrap, topic=topic)
    # Pre-encode when paced, so the pacing loop does no Avro work of its own.
    source: Iterator[tuple[bytes, bytes]] = iter(list(records())) if rate else records()
    report = publish(make_producer(settings), topic, source, rate_per_s=rate)
    if report.failed or report.published != count:
        raise RuntimeError(f"publishing failed: {report.failed} failed, {report.errors[:3]}")
    return report


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    ensure_topics(Settings(bootstrap_servers=bootstrap, topic=topic, partitions=partitions))


# --- contenders ------------------------------------------------------------------------------


def start_contender(
    run: Run, module: str, topic: str, expected: int, workdir: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    group = f"bench-{module.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:6]}"
    out = workdir / f"{group}.json"
    log = workdir / f"{group}.log"
    cmd = [
        sys.executable,
        "-m",
        module,
        "--bootstrap-servers",
        run.bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--expected",
        str(expected),
        "--out",
        str(out),
        "--timeout",
        str(run.args.timeout),
        *extra,
    ]
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return proc, out, log


def run_contender(run: Run, name: str, module: str, workdir: Path) -> Row:
    """A contender process that exits (or is stopped) once it has seen every record."""
    expected = sum(run.end_offsets.values())
    proc, out, log = start_contender(run, module, run.topic, expected, workdir)
    deadline = time.monotonic() + run.args.timeout + 30
    with PeakSampler(proc.pid) as sampler:
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        sampler.sample()
    stop_process(proc)
    if not out.exists():
        return Row(name, ok=False, note=f"no result (exit {proc.returncode}): {tail(log, 300)!r}")
    result = ContenderResult.read(out)
    return Row(
        name,
        events=result.count,
        seconds=result.last_ts - result.first_ts,
        peak_rss=max(result.peak_rss_bytes, sampler.peak),
        cpu_seconds=result.cpu_seconds,
        note=f"{result.decode_errors} undecodable/invalid counted",
    )


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    metrics_url: str
    log: Path
    settings: Settings

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for (sample, sample_labels), value in scrape(self.metrics_url, timeout_s=1.0).items():
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += value
        return total

    def settled(self, topic: str) -> tuple[float, float]:
        """(records consumed, records settled) from the main topic, per the worker's /metrics."""
        consumed = settled = 0.0
        for (name, labels), value in scrape(self.metrics_url, timeout_s=1.0).items():
            label = dict(labels)
            if label.get("topic") != topic:
                continue
            if name == "recon_records_consumed_total":
                consumed += value
            elif name == "recon_records_outcome_total" and label.get("outcome") in SETTLED:
                settled += value
        return consumed, settled


@contextlib.contextmanager
def worker_process(
    run: Run, topic: str, sink_url: str, log: Path, env: Mapping[str, str]
) -> Iterator[Worker]:
    port = free_port()
    group = f"bench-worker-{uuid.uuid4().hex[:6]}"
    settings = Settings(bootstrap_servers=run.bootstrap, topic=topic, group=group)
    child_env = {
        **os.environ,
        "RECON_BOOTSTRAP_SERVERS": run.bootstrap,
        "RECON_TOPIC": topic,
        "RECON_GROUP": group,
        "RECON_SINK_URL": sink_url,
        "RECON_METRICS_PORT": str(port),
        "RECON_LOG_LEVEL": "warning",
        **env,
    }
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=ROOT,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield Worker(proc, f"http://127.0.0.1:{port}/metrics", log, settings)
    finally:
        stop_process(proc)


def run_worker(run: Run, name: str, sink_url: str, workdir: Path, env: Mapping[str, str]) -> Row:
    """A real ``recon worker`` over the whole topic; timed from its /metrics."""
    expected = sum(run.end_offsets.values())
    log = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
    with worker_process(run, run.topic, sink_url, log, env) as worker:
        deadline = time.monotonic() + run.args.timeout
        first = last = 0.0
        settled = 0.0
        cpu_first = cpu_last = 0.0
        profile = None
        with PeakSampler(worker.proc.pid) as sampler:
            while time.monotonic() < deadline and worker.proc.poll() is None:
                consumed, settled = worker.settled(run.topic)
                now = time.time()
                if consumed and not first:
                    first = now
                    cpu_first = cpu_time(worker.proc.pid)
                    if run.args.profile and "memory" in sink_url:
                        profile = start_profile(worker.proc.pid, workdir, name)
                if settled >= expected:
                    last = now
                    cpu_last = cpu_time(worker.proc.pid)
                    break
                time.sleep(poll_interval(settled, expected, bool(first)))
            sampler.sample()
            if profile is not None:
                stop_profile(run, profile, name)
        if not last:
            why = f"exit {worker.proc.returncode}" if worker.proc.poll() is not None else "timeout"
            return Row(
                name,
                ok=False,
                note=f"{why}: settled {settled:.0f}/{expected}: {tail(log, 300)!r}",
            )
        # Correctness, not timed: every offset gets committed (commit only after apply).
        commit_s = wait_commits(worker.settings, run.topic, run.end_offsets, timeout_s=30)
    note = f"all offsets committed {commit_s:.1f}s after the last apply"
    if commit_s < 0:
        note = "offsets NOT all committed within 30s"
    return Row(
        name,
        events=expected,
        seconds=last - first,
        peak_rss=sampler.peak,
        cpu_seconds=cpu_last - cpu_first,
        note=note,
    )


def cpu_time(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def wait_commits(
    settings: Settings, topic: str, end_offsets: Mapping[int, int], timeout_s: float
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        committed = committed_offsets(settings, settings.group, topic)
        if all(committed.get(p, 0) >= end for p, end in end_offsets.items()):
            return time.monotonic() - started
        time.sleep(0.2)
    return -1.0


def start_profile(pid: int, workdir: Path, name: str) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not installed: no profile)")
        return None
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    out = workdir / f"profile-{slug}.txt"
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profile(run: Run, proc: subprocess.Popen[bytes], name: str) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    out = Path(proc.args[-1])  # type: ignore[index]
    if out.exists():
        dest = Path(run.args.profile_dir)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest / out.name)
        run.notes.append(f"py-spy profile of {name}: {dest / out.name}")


# --- latency ---------------------------------------------------------------------------------


def histogram(worker: Worker, name: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of a histogram."""
    buckets: dict[float, float] = {}
    for (sample, labels), value in scrape(worker.metrics_url, timeout_s=2.0).items():
        if sample == f"{name}_bucket":
            buckets[float(dict(labels)["le"])] = value
    return buckets


def quantile(cumulative: Mapping[float, float], q: float) -> tuple[float, tuple[float, float]]:
    """Quantile ``q`` from cumulative buckets, interpolated linearly inside its bucket."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return float("nan"), (0.0, 0.0)
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = cumulative[upper]
        if count >= rank:
            if upper == float("inf"):
                return lower, (lower, upper)
            inside = count - below
            frac = (rank - below) / inside if inside else 1.0
            return lower + (upper - lower) * frac, (lower, upper)
        lower, below = upper, count
    return bounds[-1], (bounds[-1], bounds[-1])


WARM_UP = 500


def run_raw_latency(run: Run, rate: float, workdir: Path) -> Latency:
    """The floor: the raw confluent-kafka loop's latency under the same paced load."""
    topic = f"bench.latency.{uuid.uuid4().hex[:6]}"
    create_topic(run.bootstrap, topic, run.args.partitions)
    count = max(1000, int(rate * run.args.latency_seconds))
    proc, out, log = start_contender(
        run,
        "bench.contenders.raw_loop",
        topic,
        WARM_UP + count,
        workdir,
        "--latency-skip",
        str(WARM_UP),
    )
    try:
        produce(run.bootstrap, topic, WARM_UP, entities=run.args.entities, seed=101)
        deadline = time.monotonic() + 60
        while not out.with_suffix(".ready").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"raw latency consumer not ready: {tail(log)}")
            time.sleep(0.1)
        started = time.monotonic()
        produce(run.bootstrap, topic, count, entities=run.args.entities, seed=202, rate=rate)
        achieved = count / (time.monotonic() - started)
        deadline = time.monotonic() + 120
        while not out.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"raw latency consumer did not finish: {tail(log)}")
            time.sleep(0.1)
    finally:
        stop_process(proc)
    samples = sorted(ContenderResult.read(out).latency_ms or [0.0])

    def exact(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] / 1000

    return Latency(
        "(a) raw confluent-kafka loop (floor: producer + broker + client; fetch.wait.max.ms=500)",
        rate=achieved,
        samples=len(samples),
        p50_s=exact(0.50),
        p99_s=exact(0.99),
        p99_bucket=None,
    )


def run_latency(
    run: Run, name: str, sink_url: str, rate: float, workdir: Path, env: Mapping[str, str]
) -> Latency:
    """Produce at ``rate`` for ``--latency-seconds`` into a fresh topic while a worker runs."""
    topic = f"bench.latency.{uuid.uuid4().hex[:6]}"
    create_topic(run.bootstrap, topic, run.args.partitions)
    count = max(1000, int(rate * run.args.latency_seconds))
    metric = "recon_end_to_end_latency_seconds"
    log = workdir / f"latency-{uuid.uuid4().hex[:6]}.log"
    with worker_process(run, topic, sink_url, log, env) as worker:
        # Warm up (group join, first fetches) until 500 records are settled, then measure.
        warm = produce(run.bootstrap, topic, WARM_UP, entities=run.args.entities, seed=101)
        warm_total = sum(warm.end_offsets.values())
        deadline = time.monotonic() + 60
        while worker.settled(topic)[1] < warm_total and time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"latency worker exited: {tail(log)}")
            time.sleep(0.1)
        before = histogram(worker, metric)
        started = time.monotonic()
        report = produce(
            run.bootstrap, topic, count, entities=run.args.entities, seed=202, rate=rate
        )
        achieved = count / (time.monotonic() - started)
        deadline = time.monotonic() + 120
        while worker.settled(topic)[1] < warm_total + report.published:
            if time.monotonic() > deadline:
                raise RuntimeError("latency run: not every record settled within 120 s")
            time.sleep(0.1)
        after = histogram(worker, metric)
    delta = {b: after[b] - before.get(b, 0.0) for b in after}
    p50, _ = quantile(delta, 0.50)
    p99, p99_bucket = quantile(delta, 0.99)
    return Latency(
        name,
        rate=achieved,
        samples=int(delta.get(float("inf"), 0)),
        p50_s=p50,
        p99_s=p99,
        p99_bucket=p99_bucket,
        note=f"target {rate:,.0f}/s for {run.args.latency_seconds:.0f}s",
    )


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_reachable(url: str) -> str | None:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def drop_table(url: str, table: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def count_rows(sink_url: str) -> int:
    from processors.sinks import open_sink

    sink = open_sink(sink_url)
    try:
        return len(sink.snapshot())
    finally:
        sink.close()


# --- report ----------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for dist in ("faust-streaming", "aiokafka", "confluent-kafka", "quixstreams", "fastavro"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    try:
        tansu = subprocess.run(
            [broker_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        tansu = "unknown"
    return [
        ("cores", f"{os.cpu_count()} ({cpu})"),
        ("memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("broker", f"embedded {tansu} (memory storage), 127.0.0.1"),
        ("libraries", ", ".join(versions)),
    ]


def render(run: Run) -> str:
    raw = run.raw
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run`); see docs/performance.md for what each",
        "row does and how to read it. **One run; every ratio is within that run.** The machine",
        "was shared with other work while it ran (load average below), so absolute numbers are",
        "noisy; the ratios are the comparable part.",
        "",
        f"- date: {run.started}",
    ]
    lines += [f"- {k}: {v}" for k, v in machine()]
    load = ", ".join(f"{x:.2f}" for x in run.load_before)
    lines += [
        f"- load average before the run: {load}",
        f"- data: {sum(run.end_offsets.values()):,} events over {len(run.end_offsets)} "
        f"partitions, {run.avg_bytes:.0f} bytes on average (Avro single-object), "
        f"{run.entities:,} entities; 5% duplicates, 5% reordered, 0.1% poison",
        f"- command: `python -m bench.run {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "## Throughput and memory",
        "",
        "| contender | events/s | vs raw loop | CPU µs/event | peak RSS (MB) | RSS vs raw "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in run.rows:
        if not row.ok:
            lines.append(f"| {row.name} | failed | - | - | - | - | {row.note} |")
            continue
        ratio = f"{row.rate / raw.rate:.3f}x" if raw and raw.rate else "-"
        rss = f"{row.peak_rss / raw.peak_rss:.2f}x" if raw and raw.peak_rss else "-"
        lines.append(
            f"| {row.name} | {row.rate:,.0f} | {ratio} | {row.cpu_us_per_event:.1f} "
            f"| {row.peak_rss / MB:.0f} | {rss} | {row.note} |"
        )
    if run.latencies:
        lines += [
            "",
            "## End-to-end latency at about half the max rate",
            "",
            "Record timestamp (producer's CreateTime) to the record's batch being settled in the",
            "worker; quantiles interpolated inside the buckets of the worker's",
            "`recon_end_to_end_latency_seconds` histogram (bounds 1, 2.5, 5, 10, 25, 50, 100 ms,",
            "...).",
            "The producer is `streams.publish` as shipped (linger 20 ms, included in the latency).",
            "",
            "| pipeline | produced events/s | samples | p50 (ms) | p99 (ms) | p99 bucket (ms) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for lat in run.latencies:
            bucket = "exact (per record)"
            if lat.p99_bucket is not None:
                lo, hi = lat.p99_bucket
                bucket = f"({lo * 1000:g}, {hi * 1000:g}]"
            lines.append(
                f"| {lat.name} | {lat.rate:,.0f} | {lat.samples:,} | {lat.p50_s * 1000:.1f} "
                f"| {lat.p99_s * 1000:.1f} | {bucket} |"
            )
    if run.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in run.notes]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------

CONTENDERS = ("raw", "faust", "quix", "memory", "sqlite", "postgresql")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="recon-streams benchmark (docs/performance.md)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help=f"comma list of {','.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--fast-path",
        choices=("auto", "on", "off"),
        default="auto",
        help="also run the workers with RECON_FAST_PATH=1 (auto: when the module exists)",
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="0 skips latency")
    parser.add_argument("--timeout", type=float, default=900.0, help="per contender, seconds")
    parser.add_argument("--postgres-url", default=PG_URL)
    parser.add_argument(
        "--no-diagnostics", action="store_true", help="skip the governor-off diagnostic rows"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the memory-sink workers")
    parser.add_argument("--profile-dir", default=str(ROOT / "bench" / "profiles"))
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file ('-': none)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    unknown = only - set(CONTENDERS)
    if unknown:
        print(f"unknown contenders: {sorted(unknown)}", file=sys.stderr)
        return 2
    fast = args.fast_path == "on" or (
        args.fast_path == "auto" and importlib.util.find_spec("streams.kafka.fast_consumer")
    )
    workdir = Path(tempfile.mkdtemp(prefix="recon-bench-"))
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    with EmbeddedBroker() as broker:
        topic = "bench.events"
        create_topic(broker.bootstrap_servers, topic, args.partitions)
        keys: set[str] = set()
        sizes: list[int] = []
        t0 = time.monotonic()
        report = produce(
            broker.bootstrap_servers,
            topic,
            args.events,
            entities=args.entities,
            seed=args.seed,
            keys=keys,
            sizes=sizes,
        )
        print(
            f"published {report.published:,} events ({sum(sizes) / len(sizes):.0f} B avg) to "
            f"{broker.bootstrap_servers} in {time.monotonic() - t0:.1f}s; workdir {workdir}",
            flush=True,
        )
        run = Run(
            args,
            broker.bootstrap_servers,
            topic,
            dict(report.end_offsets),
            entities=len(keys),
            avg_bytes=sum(sizes) / len(sizes),
            started=started,
            load_before=load,
        )
        run_all(run, only, bool(fast), workdir)
    text = render(run)
    print()
    print(text)
    if str(args.out) != "-":
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(r.ok for r in run.rows) else 1


def run_all(run: Run, only: set[str], fast: bool, workdir: Path) -> None:
    if "raw" in only:
        run.add(
            run_contender(run, "(a) raw confluent-kafka loop", "bench.contenders.raw_loop", workdir)
        )
    if "faust" in only:
        run.add(
            run_contender(run, "(b) plain Faust agent", "bench.contenders.faust_plain", workdir)
        )
    if "quix" in only:
        if importlib.util.find_spec("quixstreams") is None:
            run.notes.append("Quix Streams not installed: (c) skipped (`make bench` installs it).")
            print("  (c) Quix Streams: not importable, skipped", flush=True)
        else:
            run.add(
                run_contender(run, "(c) Quix Streams app", "bench.contenders.quix_app", workdir)
            )
    # The fast path is the worker's default; the per-message path (Faust's streams) is the
    # comparison row.
    modes: list[tuple[str, dict[str, str]]] = []
    if fast:
        modes.append(("", {"RECON_FAST_PATH": "1"}))
    modes.append((", per-message path", {"RECON_FAST_PATH": "0"}))
    sinks: list[tuple[str, str]] = []
    if "memory" in only:
        sinks.append(("memory", "memory://"))
    if "sqlite" in only:
        sinks.append(("sqlite", f"sqlite:///{workdir}/sink-{{n}}.db"))
    if "postgresql" in only:
        problem = postgres_reachable(run.args.postgres_url)
        if problem:
            run.notes.append(f"PostgreSQL not reachable ({problem}): its rows skipped.")
            print(f"  PostgreSQL not reachable, skipped: {problem}", flush=True)
        else:
            sinks.append(("postgresql", f"{run.args.postgres_url}?table=bench_{{n}}"))
    # Diagnostic rows (no latency run): the same workers with the backpressure governor off,
    # to show what its adaptive limit costs when the downstream is healthy.
    diagnostic: list[tuple[str, dict[str, str]]] = []
    if "governor_enabled" in Settings.model_fields and not run.args.no_diagnostics:
        off = {"RECON_GOVERNOR_ENABLED": "false"}
        diagnostic = [(f"{suffix}, governor off", {**env, **off}) for suffix, env in modes]
    for n, (sink, template) in enumerate(sinks):
        sink_modes = [*modes, *diagnostic]
        for m, (suffix, env) in enumerate(sink_modes):
            tag = f"{uuid.uuid4().hex[:6]}_{n}{m}"
            url = template.format(n=tag)
            name = f"(d) recon worker, {sink}{suffix}"
            try:
                row = run_worker(run, name, url, workdir, env)
                if row.ok and sink != "memory":
                    rows = count_rows(url)
                    if rows != run.entities:
                        row.note += f"; SINK HAS {rows} ROWS, EXPECTED {run.entities}"
                        row.ok = False
            finally:
                if sink == "postgresql":
                    drop_table(run.args.postgres_url, f"bench_{tag}")
            run.add(row)
            if (
                sink == "memory"
                and row.ok
                and run.args.latency_seconds > 0
                and (suffix, env) not in diagnostic
            ):
                if "raw" in only:
                    floor = run_raw_latency(run, row.rate / 2, workdir)
                    run.latencies.append(floor)
                    print(
                        f"  raw latency at {floor.rate:,.0f}/s: p50 {floor.p50_s * 1000:.1f} ms, "
                        f"p99 {floor.p99_s * 1000:.1f} ms",
                        flush=True,
                    )
                variants = [(f"recon worker, memory{suffix}", env)]
                if "fetch_max_wait_ms" in Settings.model_fields:
                    # The same worker with the consumer's fetch long-poll shorter than its
                    # default (100 ms): on the embedded broker the wait, not the pipeline,
                    # sets the latency floor.
                    variants.append(
                        (
                            f"recon worker, memory{suffix}, RECON_FETCH_MAX_WAIT_MS=20",
                            {**env, "RECON_FETCH_MAX_WAIT_MS": "20"},
                        )
                    )
                for lat_name, lat_env in variants:
                    lat = run_latency(run, lat_name, url, row.rate / 2, workdir, lat_env)
                    run.latencies.append(lat)
                    print(
                        f"  {lat_name} at {lat.rate:,.0f}/s: p50 {lat.p50_s * 1000:.1f} ms, "
                        f"p99 {lat.p99_s * 1000:.1f} ms ({lat.samples:,} samples)",
                        flush=True,
                    )


if __name__ == "__main__":
    sys.exit(main())
