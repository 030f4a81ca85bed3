"""``make bench-backpressure``: a downstream latency spike, with the governor on and off.

One embedded broker (unless ``--bootstrap-servers`` names one), and per run: fresh topics, a
``recon worker`` on a simulated downstream (``sim://``, 5 ms per sink call), steady load on
the three priority lanes, then the downstream's latency steps to 200 ms for 20 s (the control
file is rewritten) and back. The worker writes its governor trace (one JSON line per tick,
``RECON_GOVERNOR_TRACE_PATH``); every figure below is computed from that trace and the
times the control file was written:

* detect -- step to the governor leaving NORMAL;
* in-flight peak -- highest number of records inside the batch processor at once;
* critical e2e during the spike -- record timestamp to settled, critical lane, p50/p99;
* throughput before/during the spike, and recovery -- time from the step back until a 1 s
  window's throughput is >= 90 % of the pre-spike throughput again;
* state changes during the spike, and bulk partitions paused.

It prints them for both runs and draws ``bench/backpressure.png`` (latency, throughput,
in-flight, governor state, paused partitions over time). ``tests/streams/
test_backpressure_scenario.py`` runs the same scenario (governor on) and asserts bounds.
Traffic goes only to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from processors.codec import AvroCodec
from processors.event import EventLimits, Op, Priority, ReconEvent
from processors.sinks.sim import SimConditions, write_conditions
from streams.backpressure.lanes import LANES, Lane
from streams.broker import EmbeddedBroker, free_port
from streams.publish import make_producer
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ScenarioSpec:
    governor: bool = True
    partitions: int = 4
    base_latency_ms: float = 5.0
    spike_latency_ms: float = 200.0
    warmup_s: float = 12.0  # load before the step (the last pre_s of it is "pre-spike")
    pre_s: float = 6.0
    spike_s: float = 20.0
    post_s: float = 12.0
    drain_timeout_s: float = 90.0
    rates: Mapping[str, float] = field(
        default_factory=lambda: {"critical": 20.0, "normal": 200.0, "bulk": 400.0}
    )
    entities: int = 2000
    # Worker settings for the run (RECON_* without the prefix), on top of the defaults.
    worker_env: Mapping[str, str] = field(
        default_factory=lambda: {
            "GOVERNOR_LIMIT_MAX": "1000",
            "GOVERNOR_LIMIT_INITIAL": "500",
            # Faust's 1500 ms fetch wait makes the embedded broker deliver in ~0.75 s bursts
            # (streams/kafka/fetch_wait.py); both runs use 100 ms.
            "FETCH_MAX_WAIT_MS": "100",
        }
    )
    seed: int = 7


@dataclass
class Figures:
    governor: bool
    detect_s: float | None = None
    changes_during_spike: int = 0
    transitions: list[dict[str, Any]] = field(default_factory=list)
    in_flight_peak: int = 0
    in_flight_bound: int | None = None
    critical_e2e_pre_p99_s: float | None = None
    critical_e2e_spike_p50_s: float | None = None
    critical_e2e_spike_p99_s: float | None = None
    critical_e2e_spike_n: int = 0
    critical_produced_spike: int = 0
    pre_throughput: float = 0.0
    spike_throughput: dict[str, float] = field(default_factory=dict)
    recovery_s: float | None = None
    bulk_paused_share: float = 0.0  # share of spike ticks (after detection) with bulk paused
    paused_partitions_max: int = 0
    paused_at_end: int = 0
    final_state: str = ""
    produced: dict[str, int] = field(default_factory=dict)  # delivered to the broker
    produce_failed: int = 0
    processed: dict[str, int] = field(default_factory=dict)
    drained_s: float | None = None


@dataclass
class ScenarioRun:
    spec: ScenarioSpec
    step_at: float
    step_down_at: float
    trace: list[dict[str, Any]]
    figures: Figures
    worker_log: Path


# --- load ------------------------------------------------------------------------------------


class LaneLoad(threading.Thread):
    """Produces one lane's events at a steady rate until stopped (bounded by ``max_s``)."""

    def __init__(
        self, settings: Settings, lane: Lane, rate: float, entities: int, max_s: float
    ) -> None:
        super().__init__(name=f"load-{lane.value}", daemon=True)
        self.settings = settings
        self.lane = lane
        self.rate = rate
        self.entities = entities
        self.max_s = max_s
        self.stop_event = threading.Event()
        self.sent_times: list[float] = []  # time.time() of each produce call
        self.delivered = 0
        self.failed = 0

    def run(self) -> None:
        topic = TopicNames.from_settings(self.settings).lane_topic(self.lane)
        producer = make_producer(self.settings, **{"linger.ms": 5})
        codec = AvroCodec(EventLimits())
        started = time.time()
        deadline = time.monotonic() + self.max_s
        sent = 0

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1

        while not self.stop_event.is_set() and time.monotonic() < deadline:
            due = int((time.time() - started) * self.rate)
            while sent < due:
                entity = sent % self.entities
                now_ms = int(time.time() * 1000)
                event = ReconEvent(
                    event_id=f"{self.lane.value}-{sent}",
                    entity_id=f"{self.lane.value}-{entity}",
                    version=sent // self.entities + 1,
                    op=Op.UPSERT,
                    fields={"seq": sent},
                    priority=Priority(self.lane.value),
                    occurred_at_ms=now_ms,
                    source="bench",
                )
                with contextlib.suppress(BufferError):
                    producer.produce(
                        topic,
                        key=event.entity_id.encode(),
                        value=codec.encode(event),
                        on_delivery=delivered,
                    )
                    self.sent_times.append(now_ms / 1000)
                    sent += 1
            producer.poll(0.005)
        producer.flush(30)


# --- the worker ------------------------------------------------------------------------------


def worker_env(settings: Settings, metrics_port: int, extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        **os.environ,
        "RECON_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RECON_TOPIC": settings.topic,
        "RECON_GROUP": settings.group,
        "RECON_SINK_URL": settings.sink_url,
        "RECON_METRICS_PORT": str(metrics_port),
        "RECON_PARTITIONS": str(settings.partitions),
        "RECON_LOG_LEVEL": "info",
    }
    env.update({f"RECON_{k.upper()}": v for k, v in extra.items()})
    return env


@contextlib.contextmanager
def running_worker(env: Mapping[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def read_trace(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            lines.append(json.loads(text))
    return lines


def _wait(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited while waiting for {what}:\n{_tail(log)}")
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout_s}s\n{_tail(log)}")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


# --- the scenario ----------------------------------------------------------------------------


def run_scenario(bootstrap_servers: str, workdir: Path, spec: ScenarioSpec) -> ScenarioRun:
    """Run the spike scenario once; every step is bounded in time."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    control = workdir / f"sim-{run}.json"
    trace_path = workdir / f"trace-{run}.jsonl"
    log_path = workdir / f"worker-{run}.log"
    settings = Settings(
        bootstrap_servers=bootstrap_servers,
        topic=f"bp{run}.events",
        group=f"bp{run}",
        partitions=spec.partitions,
        sink_url=(
            f"sim://?db={workdir}/sink-{run}.db&control={control}&latency_ms={spec.base_latency_ms}"
        ),
        metrics_port=0,
    )
    ensure_topics(settings)
    write_conditions(control, SimConditions(latency_ms=spec.base_latency_ms))
    extra = {
        "GOVERNOR_ENABLED": "true" if spec.governor else "false",
        "GOVERNOR_TRACE_PATH": str(trace_path),
        **spec.worker_env,
    }
    env = worker_env(settings, free_port(), extra)
    loads = [
        LaneLoad(settings, lane, spec.rates.get(lane.value, 0.0), spec.entities, 600.0)
        for lane in LANES
        if spec.rates.get(lane.value, 0.0) > 0
    ]
    with running_worker(env, log_path) as proc:
        # Ready: assigned and ticking (the trace shows assigned lane partitions' lag).
        _wait(
            "worker ready", lambda: "Worker]: Ready" in _tail(log_path, 10**6), 90, proc, log_path
        )
        _wait("trace", lambda: read_trace(trace_path), 30, proc, log_path)
        for load in loads:
            load.start()
        try:
            time.sleep(spec.warmup_s)
            write_conditions(control, SimConditions(latency_ms=spec.spike_latency_ms))
            step_at = time.time()
            time.sleep(spec.spike_s)
            write_conditions(control, SimConditions(latency_ms=spec.base_latency_ms))
            step_down_at = time.time()
            time.sleep(spec.post_s)
        finally:
            for load in loads:
                load.stop_event.set()
            for load in loads:
                load.join(timeout=40)
        produced = {load.lane.value: load.delivered for load in loads}
        total = sum(produced.values())

        def drained() -> bool:
            trace = read_trace(trace_path)
            return bool(trace) and sum(trace[-1]["processed"].values()) >= total

        with contextlib.suppress(TimeoutError):
            _wait("drain", drained, spec.drain_timeout_s, proc, log_path)
        time.sleep(0.5)
    trace = read_trace(trace_path)
    figures = compute_figures(spec, trace, step_at, step_down_at, loads, produced)
    return ScenarioRun(spec, step_at, step_down_at, trace, figures, log_path)


# --- figures ---------------------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank: the smallest value with >= q of them at or below
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def throughput_series(
    trace: Sequence[Mapping[str, Any]], window_s: float = 1.0
) -> list[tuple[float, float]]:
    """(window start, records/s settled in [start, start + window_s)) at each tick."""
    points = [(line["t"], sum(line["processed"].values())) for line in trace]
    series = []
    j = 0
    for i, (t0, n0) in enumerate(points):
        j = max(j, i)
        while j < len(points) and points[j][0] < t0 + window_s:
            j += 1
        if j >= len(points):
            break
        t1, n1 = points[j]
        series.append((t0, (n1 - n0) / (t1 - t0)))
    return series


def _rate(trace: Sequence[Mapping[str, Any]], start: float, end: float, lane: str | None) -> float:
    inside = [line for line in trace if start <= line["t"] <= end]
    if len(inside) < 2:
        return 0.0

    def count(line: Mapping[str, Any]) -> int:
        processed = line["processed"]
        return int(processed[lane]) if lane else sum(processed.values())

    return (count(inside[-1]) - count(inside[0])) / (inside[-1]["t"] - inside[0]["t"])


def compute_figures(
    spec: ScenarioSpec,
    trace: Sequence[Mapping[str, Any]],
    step_at: float,
    step_down_at: float,
    loads: Sequence[LaneLoad],
    produced: Mapping[str, int],
) -> Figures:
    fig = Figures(
        governor=spec.governor,
        produced=dict(produced),
        produce_failed=sum(load.failed for load in loads),
    )
    if not trace:
        return fig
    for line in trace:
        for transition in line.get("transitions", []):
            fig.transitions.append({"t": line["t"], **transition})
    left = [t for t in fig.transitions if t["t"] >= step_at and t["from"] == "normal"]
    if left:
        fig.detect_s = round(left[0]["t"] - step_at, 3)
    fig.changes_during_spike = sum(1 for t in fig.transitions if step_at <= t["t"] < step_down_at)
    fig.in_flight_peak = max(line["in_flight_peak"] for line in trace)
    fig.in_flight_bound = int(spec.worker_env.get("GOVERNOR_LIMIT_MAX", "2000"))

    def e2e(start: float, end: float) -> list[float]:
        return [
            v / 1000
            for line in trace
            if start <= line["t"] <= end
            for v in line.get("e2e_ms", {}).get("critical", [])
        ]

    pre = e2e(step_at - spec.pre_s, step_at)
    fig.critical_e2e_pre_p99_s = _quantile(pre, 0.99)
    spike = e2e(step_at, step_down_at)
    fig.critical_e2e_spike_n = len(spike)
    fig.critical_e2e_spike_p50_s = _quantile(spike, 0.5)
    fig.critical_e2e_spike_p99_s = _quantile(spike, 0.99)
    critical = [load for load in loads if load.lane is Lane.CRITICAL]
    if critical:
        fig.critical_produced_spike = sum(
            1 for t in critical[0].sent_times if step_at <= t < step_down_at
        )
    fig.pre_throughput = round(_rate(trace, step_at - spec.pre_s, step_at, None), 1)
    fig.spike_throughput = {
        lane.value: round(_rate(trace, step_at + 2, step_down_at, lane.value), 1) for lane in LANES
    }
    for start, rate in throughput_series(trace):
        if start >= step_down_at and rate >= 0.9 * fig.pre_throughput:
            fig.recovery_s = round(start + 1.0 - step_down_at, 2)
            break
    after = fig.detect_s if fig.detect_s is not None else 1.0
    spike_ticks = [line for line in trace if step_at + after + 0.5 <= line["t"] < step_down_at]
    if spike_ticks:
        paused = [line for line in spike_ticks if "bulk" not in line["lanes"] and line["paused"]]
        fig.bulk_paused_share = round(len(paused) / len(spike_ticks), 3)
    fig.paused_partitions_max = max(line["paused"] for line in trace)
    fig.paused_at_end = trace[-1]["paused"]
    fig.final_state = trace[-1]["state"]
    fig.processed = dict(trace[-1]["processed"])
    total = sum(produced.values())
    done = [line["t"] for line in trace if sum(line["processed"].values()) >= total]
    if done and done[0] >= step_down_at:
        fig.drained_s = round(done[0] - step_down_at, 2)
    return fig


# --- report ----------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value * scale:.{digits}f}{unit}"
    return f"{value}{unit}"


def report(runs: Sequence[ScenarioRun]) -> str:
    rows = [
        ("left NORMAL after the step", lambda f: _fmt(f.detect_s, " s")),
        ("state changes during the spike", lambda f: _fmt(f.changes_during_spike)),
        ("in-flight peak (records)", lambda f: _fmt(f.in_flight_peak)),
        ("in-flight bound (limit max)", lambda f: _fmt(f.in_flight_bound)),
        ("critical e2e p99 before the spike", lambda f: _fmt(f.critical_e2e_pre_p99_s, " s")),
        ("critical e2e p50 during the spike", lambda f: _fmt(f.critical_e2e_spike_p50_s, " s")),
        ("critical e2e p99 during the spike", lambda f: _fmt(f.critical_e2e_spike_p99_s, " s")),
        (
            "critical settled / produced in spike",
            lambda f: f"{f.critical_e2e_spike_n} / {f.critical_produced_spike}",
        ),
        ("throughput before the spike (rec/s)", lambda f: _fmt(f.pre_throughput, digits=0)),
        (
            "during: critical / normal / bulk (rec/s)",
            lambda f: " / ".join(
                _fmt(f.spike_throughput.get(lane.value), digits=0) for lane in LANES
            ),
        ),
        ("back to >= 90% throughput after", lambda f: _fmt(f.recovery_s, " s")),
        ("share of spike with bulk paused", lambda f: _fmt(f.bulk_paused_share, " %", 100, 0)),
        (
            "paused partitions: max / at end",
            lambda f: f"{f.paused_partitions_max} / {f.paused_at_end}",
        ),
        ("backlog drained after the spike", lambda f: _fmt(f.drained_s, " s")),
        (
            "produced / settled",
            lambda f: f"{sum(f.produced.values())} / {sum(f.processed.values())}",
        ),
    ]
    head = ["", *[("governor on" if r.figures.governor else "governor off") for r in runs]]
    table = [head, *[[name, *[get(r.figures) for r in runs]] for name, get in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    out = []
    for row in table:
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    return "\n".join(out)


def plot(runs: Sequence[ScenarioRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, len(runs), figsize=(7 * len(runs), 13), sharex="col", squeeze=False)
    for col, run in enumerate(runs):
        t0 = run.step_at - run.spec.warmup_s
        trace = [line for line in run.trace if line["t"] >= t0]
        ts = [line["t"] - t0 for line in trace]
        title = "governor on" if run.spec.governor else "governor off"
        ax = axes[0][col]
        apply_t = [line["t"] - t0 for line in trace if "apply" in line]
        ax.plot(
            apply_t,
            [line["apply"]["max_ms"] for line in trace if "apply" in line],
            lw=0.8,
            label="sink call, max per tick",
        )
        crit = [
            (line["t"] - t0, v)
            for line in trace
            for v in line.get("e2e_ms", {}).get("critical", [])
        ]
        if crit:
            ax.plot([c[0] for c in crit], [c[1] for c in crit], ".", ms=2, label="critical e2e")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(f"{title}: latency")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[1][col]
        for lane in LANES:
            points = [(line["t"], line["processed"][lane.value]) for line in trace]
            rates = [
                (
                    points[i][0] - t0,
                    (points[i][1] - points[i - 10][1]) / (points[i][0] - points[i - 10][0]),
                )
                for i in range(10, len(points))
            ]
            ax.plot([r[0] for r in rates], [r[1] for r in rates], lw=0.8, label=lane.value)
        ax.set_ylabel("records/s (1 s)")
        ax.set_title("throughput per lane")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[2][col]
        ax.plot(
            ts, [line["in_flight_peak"] for line in trace], lw=0.8, label="in flight (peak/tick)"
        )
        if run.spec.governor:
            ax.plot(ts, [line["limit"] for line in trace], lw=0.8, label="limit")
        ax.set_ylabel("records")
        ax.set_title("in flight")
        ax.legend(fontsize=7, loc="upper left")
        ax = axes[3][col]
        codes = {"normal": 0, "degraded": 1, "recovery": 2, "off": -1}
        ax.step(ts, [codes[line["state"]] for line in trace], where="post", lw=1.2)
        ax.set_yticks([-1, 0, 1, 2], ["off", "normal", "degraded", "recovery"])
        ax.set_title("governor state (dashed: lanes stopped, right axis)")
        if run.spec.governor:
            lanes = ax.twinx()
            stopped = [3 - len(line["lanes"]) for line in trace]
            lanes.step(ts, stopped, where="post", lw=0.8, ls="--", color="tab:orange")
            lanes.set_yticks([0, 1, 2], ["none", "bulk", "bulk+normal"])
        ax = axes[4][col]
        ax.step(ts, [line["paused"] for line in trace], where="post", lw=1)
        ax.set_ylabel("partitions")
        ax.set_title("paused partitions")
        ax.set_xlabel("seconds")
        for row in axes:
            row[col].axvspan(run.step_at - t0, run.step_down_at - t0, color="tab:red", alpha=0.08)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- the knee (why AIMD on the median big call, measured) ------------------------------------


@dataclass
class KneePoint:
    records: int
    p50_ms: float
    records_per_s: float


def measure_knee(
    workdir: Path,
    latency_ms: float = 5.0,
    sizes: Sequence[int] = (10, 25, 50, 100, 200, 400, 800, 1600, 3200),
    calls: int = 15,
) -> list[KneePoint]:
    """Apply batches of each size through the real Reconciler into the simulated downstream
    (SQLite underneath, ``latency_ms`` per load and per write): latency per call and
    records/s. New entities every call, so every record is a row write."""
    from processors.reconciler import Reconciler
    from processors.sinks.sim import SimulatedSink

    workdir.mkdir(parents=True, exist_ok=True)
    sink = SimulatedSink(
        workdir / f"knee-{uuid.uuid4().hex[:6]}.db", SimConditions(latency_ms=latency_ms)
    )
    reconciler = Reconciler(sink)
    points = []
    serial = 0
    try:
        for size in sizes:
            latencies = []
            for _ in range(calls):
                batch = []
                for _ in range(size):
                    serial += 1
                    batch.append(
                        ReconEvent(
                            event_id=f"k-{serial}",
                            entity_id=f"k-{serial}",
                            version=1,
                            op=Op.UPSERT,
                            fields={"balance": float(serial), "status": "open"},
                            priority=Priority.BULK,
                            occurred_at_ms=0,
                            source="knee",
                        )
                    )
                started = time.perf_counter()
                reconciler.reconcile(batch)
                latencies.append(time.perf_counter() - started)
            p50 = sorted(latencies)[len(latencies) // 2]
            points.append(KneePoint(size, round(p50 * 1000, 2), round(size / p50)))
    finally:
        sink.close()
    return points


def governor_on_curve(points: Sequence[KneePoint], seconds: float = 300.0) -> list[int]:
    """Where the governor's limit settles on the measured latency curve (interpolated), with
    a backlog: the limits over the last third of ``seconds``."""
    from streams.backpressure.governor import Governor, GovernorPolicy, TickSignals

    xs = [p.records for p in points]
    ys = [p.p50_ms / 1000 for p in points]

    def latency(n: int) -> float:
        """Linear interpolation (and extrapolation past the last point)."""
        if n <= xs[0]:
            return ys[0]
        i = next((i for i in range(1, len(xs)) if n <= xs[i]), len(xs) - 1)
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (n - xs[i - 1]) / (xs[i] - xs[i - 1])

    policy = GovernorPolicy(limit_initial=100, limit_max=xs[-1], batch_max=xs[-1])
    gov = Governor(policy, 0.0)
    t, free_at, limits = 0.0, 0.0, []
    ticks = int(seconds / policy.tick_s)
    for i in range(ticks):
        end = t + policy.tick_s
        n = gov.decision.chunk(Lane.NORMAL)
        while free_at + latency(n) <= end:  # back-to-back calls (a backlog)
            free_at += latency(n)
            gov.observe_apply(latency(n), n, False, free_at)
        free_at = max(free_at, end - latency(n) / 2)
        t = end
        decision = gov.tick(t, TickSignals(in_flight_peak=n, consumer_lag=10**6, cpu_percent=20))
        if i >= ticks * 2 // 3:
            limits.append(decision.limit)
    return limits


def knee_report(points: Sequence[KneePoint], limits: Sequence[int]) -> str:
    base = points[0].p50_ms
    lines = ["records/call  p50 ms  records/s  latency/smallest"]
    for p in points:
        lines.append(
            f"{p.records:12d}  {p.p50_ms:6.1f}  {p.records_per_s:9d}  {p.p50_ms / base:6.2f}x"
        )
    lines.append(
        f"governor on this curve (backlog, 300 s simulated): limit {min(limits)}..{max(limits)}, "
        f"median {sorted(limits)[len(limits) // 2]}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", help="use this broker instead of an embedded one")
    parser.add_argument("--workdir", default=None, help="traces, logs and sink files")
    parser.add_argument("--png", default=str(HERE / "backpressure.png"))
    parser.add_argument("--json", default=str(HERE / "backpressure.json"))
    parser.add_argument("--spike-s", type=float, default=20.0)
    parser.add_argument("--only", choices=("on", "off"), default=None)
    parser.add_argument("--knee", action="store_true", help="only the batch-size sweep")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(f"/tmp/recon-bench-bp-{os.getpid()}")
    points = measure_knee(workdir)
    knee = knee_report(points, governor_on_curve(points))
    print("batch size sweep, simulated downstream at 5 ms per load/write:")
    print(knee, flush=True)
    if args.knee:
        return 0
    modes = [m for m in (True, False) if args.only is None or (args.only == "on") == m]
    runs: list[ScenarioRun] = []
    with contextlib.ExitStack() as stack:
        servers = args.bootstrap_servers
        if not servers:
            servers = stack.enter_context(EmbeddedBroker()).bootstrap_servers
        for governor in modes:
            spec = ScenarioSpec(governor=governor, spike_s=args.spike_s)
            print(
                f"running the spike scenario, governor {'on' if governor else 'off'} ...",
                flush=True,
            )
            runs.append(run_scenario(servers, workdir, spec))
    print()
    print(report(runs))
    print()
    print(knee)
    Path(args.json).write_text(
        json.dumps(
            [{"spec": {**asdict(r.spec)}, "figures": asdict(r.figures)} for r in runs],
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    plot(runs, Path(args.png))
    print(f"\nplot: {args.png}\nfigures: {args.json}\ntraces and worker logs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
