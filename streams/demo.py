"""``recon demo``: the main job on embedded defaults, end to end, with live progress.

Composition of the same pieces the CLI exposes: an embedded broker (unless one answers),
the topics, N ``recon worker`` processes, a synthetic upstream with duplicates, reorders and
poison pills, and a simulated downstream that goes through a latency spike and a spell of
transient faults. It ends by balancing the books (produced = applied + no-op +
dead-lettered), checking the sink row by row against the published events, and writing a
report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from processors.codec import AvroCodec
from processors.sinks import open_sink
from processors.sinks.sim import SimConditions, write_conditions
from processors.synthetic import SyntheticSpec, generate
from processors.verification import ExpectedState
from streams.broker import ensure_broker, free_port
from streams.failures.routing import DLT_REASON, headers_dict
from streams.kafka.client_config import confluent_config
from streams.kafka.offsets import read_topic
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals, scrape_total
from streams.publish import PublishReport, make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics

# The demo's retry tiers are shorter than the default (1s,10s,60s) so a run ends in seconds.
DEMO_RETRY_DELAYS = "1s,2s,4s"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    events: int = 20_000
    duration_s: float = 20.0
    workers: int = 1
    report_dir: Path = Path("reports")
    seed: int = 7
    drain_timeout_s: float = 180.0


@dataclass(frozen=True, slots=True)
class Phase:
    """Downstream conditions from ``start`` (a fraction of the load's duration) onwards."""

    start: float
    name: str
    conditions: SimConditions


PHASES = (
    Phase(0.0, "healthy", SimConditions(latency_ms=2.0, jitter_ms=1.0)),
    Phase(0.25, "latency spike", SimConditions(latency_ms=80.0, jitter_ms=20.0)),
    Phase(0.45, "healthy", SimConditions(latency_ms=2.0, jitter_ms=1.0)),
    Phase(0.55, "transient faults", SimConditions(latency_ms=2.0, jitter_ms=1.0, error_rate=0.4)),
    Phase(0.70, "healthy", SimConditions(latency_ms=2.0, jitter_ms=1.0)),
)


@dataclass
class Worker:
    index: int
    metrics_port: int
    proc: subprocess.Popen[bytes]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the demo's timeline (cumulative counts)."""

    elapsed_s: float
    phase: str
    published: int
    outcomes: dict[str, int]


@dataclass
class DemoState:
    phase: str = "starting"
    report: PublishReport = field(default_factory=PublishReport)
    publishing: bool = True
    outcomes: Counter[str] = field(default_factory=Counter)
    timeline: list[Sample] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    console = Console()
    options.report_dir.mkdir(parents=True, exist_ok=True)
    with ensure_broker(settings.bootstrap_servers, confluent_config(settings)) as (
        bootstrap,
        started,
    ):
        suffix = "" if started is not None else f".demo-{uuid.uuid4().hex[:6]}"
        db = options.report_dir / "demo.db"
        control = options.report_dir / "sim-control.json"
        for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), control):
            stale.unlink(missing_ok=True)
        settings = settings.model_copy(
            update={
                "bootstrap_servers": bootstrap,
                "topic": settings.topic + suffix,
                "group": settings.group + suffix,
                "sink_url": f"sim://?db={db.resolve()}&control={control.resolve()}",
            }
        )
        where = "embedded broker (started)" if started else "running broker"
        console.print(f"[bold]recon demo[/]: {where} at {bootstrap}, topic {settings.topic}")
        write_conditions(control, PHASES[0].conditions)
        ensure_topics(settings)
        workers = [_start_worker(settings, i, options.report_dir) for i in range(options.workers)]
        try:
            return _run(settings, options, workers, control, console)
        finally:
            _stop_workers(workers)


def _run(
    settings: Settings,
    options: DemoOptions,
    workers: list[Worker],
    control: Path,
    console: Console,
) -> int:
    codec = AvroCodec(settings.event_limits)
    spec = SyntheticSpec(
        count=options.events, entities=max(10, options.events // 20), seed=options.seed
    )
    records = list(generate(spec, codec))
    expected = ExpectedState().observe_all(r.event for r in records if r.event is not None)
    state = DemoState()
    producer = make_producer(settings)

    def produce() -> None:
        state.report = publish(
            producer,
            settings.topic,
            ((r.key.encode(), r.value) for r in records),
            rate_per_s=options.events / options.duration_s,
            on_progress=lambda rep: setattr(state, "report", rep),
        )
        state.publishing = False

    publisher = threading.Thread(target=produce, name="demo-publisher", daemon=True)
    started = time.monotonic()
    publisher.start()
    urls = [w.metrics_url for w in workers]
    state.urls = urls
    deadline = started + options.duration_s + options.drain_timeout_s
    with Live(_view(state, options, time.monotonic() - started), console=console) as live:
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - started
            _set_phase(state, control, elapsed / options.duration_s)
            state.outcomes = outcome_totals(urls)
            state.timeline.append(
                Sample(elapsed, state.phase, state.report.published, dict(state.outcomes))
            )
            live.update(_view(state, options, elapsed))
            done = sum(state.outcomes[o] for o in TERMINAL_OUTCOMES)
            if not state.publishing and done >= state.report.published:
                break
            if any(w.proc.poll() is not None for w in workers):
                console.print("[red]a worker exited early; see its log in the report dir[/]")
                break
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    time.sleep(settings.commit_interval_s + 0.5)  # let the last offsets commit
    return _summarize(settings, options, state, expected, elapsed, console)


def _set_phase(state: DemoState, control: Path, progress: float) -> None:
    phase = [p for p in PHASES if p.start <= progress][-1]
    if phase.name != state.phase or progress < 1e-9:
        if state.phase != phase.name:
            write_conditions(control, phase.conditions)
        state.phase = phase.name


def _view(state: DemoState, options: DemoOptions, elapsed: float) -> Table:
    table = Table(title=f"recon demo - {elapsed:5.1f}s - downstream: {state.phase}")
    for column in (
        "published",
        "applied",
        "duplicate",
        "stale",
        "retried",
        "dead-lettered",
        "pending",
    ):
        table.add_column(column, justify="right")
    done = sum(state.outcomes[o] for o in TERMINAL_OUTCOMES)
    table.add_row(
        f"{state.report.published}/{options.events}",
        str(state.outcomes["applied"]),
        str(state.outcomes["duplicate"]),
        str(state.outcomes["stale"]),
        str(state.outcomes["retried"]),
        str(state.outcomes["dead_lettered"]),
        str(max(0, state.report.published - done)),
    )
    return table


def _summarize(
    settings: Settings,
    options: DemoOptions,
    state: DemoState,
    expected: ExpectedState,
    elapsed: float,
    console: Console,
) -> int:
    out = state.outcomes
    produced = state.report.published
    no_op = out["duplicate"] + out["stale"]
    # Re-deliveries (at-least-once: a rewind after a pause, a rebalance) were settled twice and
    # counted twice above; the worker counts them, so each record is counted once here.
    redelivered = int(sum(scrape_total(w, "recon_records_redelivered_total") for w in state.urls))
    lost = produced - (out["applied"] + no_op + out["dead_lettered"] - redelivered)
    dlt = list(read_topic(settings, settings.dlt_topic, idle_timeout_s=1.5))
    reasons = Counter(headers_dict(m.headers() or []).get(DLT_REASON, "?") for m in dlt)
    sink = open_sink(settings.sink_url)
    try:
        rows = sink.snapshot()
    finally:
        sink.close()
    mismatches = expected.verify(rows)
    balanced = lost == 0 and len(dlt) == out["dead_lettered"]
    lines = [
        f"recon demo summary ({options.events} events over {options.duration_s:.0f}s, "
        f"{options.workers} worker(s), {elapsed:.1f}s to drain)",
        f"produced      {produced}",
        f"applied       {out['applied']}",
        f"no-op         {no_op} (duplicate {out['duplicate']}, stale {out['stale']})",
        f"dead-lettered {out['dead_lettered']} (on the DLT topic: {len(dlt)}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        + ")",
        f"retried       {out['retried']} (copies through the retry tiers; not a final outcome)",
        f"re-delivered  {redelivered} (settled twice, counted once; idempotent apply: no effect)",
        f"lost          {lost}",
        f"sink check    {expected.entities - len(mismatches)}/{expected.entities} entities "
        f"match their highest-version event; {len(mismatches)} mismatches",
        f"books         {'BALANCED' if balanced and not mismatches else 'NOT BALANCED'}: "
        f"produced = applied + no-op + DLT - re-delivered",
    ]
    for mismatch in mismatches[:10]:
        lines.append(f"  mismatch {mismatch.entity_id}: {mismatch.problem}")
    text = "\n".join(lines)
    console.print(text)
    report = options.report_dir / "demo-summary.txt"
    report.write_text(text + "\n", encoding="utf-8")
    console.print(f"report: {report}")
    plot = plot_timeline(state.timeline, options.report_dir / "demo-report.png")
    console.print(f"plot:   {plot}" if plot else "plot:   skipped (matplotlib not installed)")
    return 0 if balanced and not mismatches else 1


def _start_worker(settings: Settings, index: int, log_dir: Path) -> Worker:
    port = free_port()
    env = {
        **os.environ,
        "RECON_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RECON_TOPIC": settings.topic,
        "RECON_GROUP": settings.group,
        "RECON_SINK_URL": settings.sink_url,
        "RECON_METRICS_PORT": str(port),
        "RECON_RETRY_DELAYS": DEMO_RETRY_DELAYS,
        # One in-place attempt: the fault phase then shows records travelling the retry tiers.
        "RECON_INLINE_ATTEMPTS": "1",
        # A short circuit wait, so the plot shows the recovery within a second or two.
        "RECON_CIRCUIT_MAX_OPEN_S": "2",
        "RECON_LOG_LEVEL": "warning",
    }
    log = (log_dir / f"worker-{index}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--no-create-topics"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return Worker(index, port, proc)


def _stop_workers(workers: list[Worker], timeout_s: float = 15.0) -> None:
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        try:
            worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


def plot_timeline(timeline: list[Sample], path: Path) -> Path | None:
    """Throughput, backlog and retries over time, with the downstream's phases shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if len(timeline) < 2:
        return None
    times = [s.elapsed_s for s in timeline]
    final = [sum(s.outcomes.get(o, 0) for o in TERMINAL_OUTCOMES) for s in timeline]
    rates = [0.0] + [
        (final[i] - final[i - 1]) / max(1e-6, times[i] - times[i - 1]) for i in range(1, len(times))
    ]
    backlog = [max(0, s.published - f) for s, f in zip(timeline, final, strict=True)]
    retried = [s.outcomes.get("retried", 0) for s in timeline]
    dead = [s.outcomes.get("dead_lettered", 0) for s in timeline]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    axes[0].plot(times, rates, color="tab:blue")
    axes[0].set_ylabel("settled records/s")
    axes[1].plot(times, backlog, color="tab:orange")
    axes[1].set_ylabel("backlog (records)")
    axes[2].plot(times, retried, label="retried (cumulative)", color="tab:purple")
    axes[2].plot(times, dead, label="dead-lettered (cumulative)", color="tab:red")
    axes[2].set_ylabel("records")
    axes[2].set_xlabel("seconds since the load started")
    axes[2].legend(loc="upper left")
    start = 0
    colours = {"latency spike": "gold", "transient faults": "salmon"}
    for i in range(1, len(timeline) + 1):
        if i == len(timeline) or timeline[i].phase != timeline[start].phase:
            colour = colours.get(timeline[start].phase)
            if colour:
                for axis in axes:
                    axis.axvspan(times[start], times[i - 1], color=colour, alpha=0.3)
                axes[0].text(times[start], max(rates) * 0.95, timeline[start].phase, fontsize=8)
            start = i
    fig.suptitle("recon demo: the downstream goes through a latency spike and transient faults")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
