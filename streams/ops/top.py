"""``recon top``: a live terminal view of one or more running workers, read from /metrics.

Each refresh scrapes every ``--metrics-url`` and shows, per worker: whether it answers and is
ready, its partitions, records in flight, the circuit breaker, the governor's state and
in-flight limit, and the partitions it paused; across workers: records per outcome (totals and
rates, from the difference between two successive scrapes) and lag per partition in messages
and seconds. It only reads the Prometheus text the worker already exports: no Kafka client,
no settings.

On a terminal the view redraws in place (rich Live). When the output is not a terminal (a
pipe, a log, a test), each refresh is printed one after the other instead.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

DEFAULT_METRICS_URL = "http://127.0.0.1:9308/metrics"
OUTCOMES = ("applied", "duplicate", "stale", "retried", "parked", "dead_lettered")
CIRCUIT_STATES = {0: "closed", 1: "half-open", 2: "open"}
GOVERNOR_STATES = {-1: "off", 0: "normal", 1: "degraded", 2: "recovery"}
_STYLES = {
    "closed": "green",
    "half-open": "yellow",
    "open": "bold red",
    "normal": "green",
    "degraded": "bold red",
    "recovery": "yellow",
    "off": "dim",
}
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    messages: float
    seconds: float
    worker: str


@dataclass(slots=True)
class WorkerSnapshot:
    """What one scrape of one worker said (``error`` set when it did not answer)."""

    url: str
    at: float
    error: str | None = None
    ready: float | None = None
    assigned: float | None = None
    in_flight: float | None = None
    circuit: float | None = None
    governor: float | None = None
    governor_limit: float | None = None
    paused: float | None = None
    outcomes: dict[str, float] = field(default_factory=dict)
    lag: list[PartitionLag] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.error is None

    @property
    def processed(self) -> float:
        return sum(self.outcomes.values())


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


def fetch(url: str, timeout_s: float = 2.0) -> str:
    """The body at ``url`` (OSError, with urllib's errors, when it does not answer 200)."""
    with urllib.request.urlopen(check_url(url), timeout=timeout_s) as response:
        return str(response.read(MAX_RESPONSE_BYTES).decode("utf-8", errors="replace"))


def parse_snapshot(url: str, text: str, at: float) -> WorkerSnapshot:
    """A :class:`WorkerSnapshot` from Prometheus text exposition."""
    snap = WorkerSnapshot(url=url, at=at)
    gauges = {
        "recon_ready": "ready",
        "recon_assigned_partitions": "assigned",
        "recon_in_flight_records": "in_flight",
        "recon_circuit_state": "circuit",
        "recon_governor_state": "governor",
        "recon_governor_limit": "governor_limit",
        "recon_paused_partitions": "paused",
    }
    lag_seconds: dict[tuple[str, int], float] = {}
    lag_messages: dict[tuple[str, int], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name in gauges:
                setattr(snap, gauges[name], value)
            elif name == "recon_records_outcome_total":
                outcome = labels.get("outcome", "")
                snap.outcomes[outcome] = snap.outcomes.get(outcome, 0.0) + value
            elif name in ("recon_consumer_lag_messages", "recon_consumer_lag_seconds"):
                key = (labels.get("topic", ""), int(labels.get("partition", "-1")))
                target = lag_messages if name.endswith("messages") else lag_seconds
                target[key] = value
    snap.lag = [
        PartitionLag(topic, partition, messages, lag_seconds.get((topic, partition), 0.0), url)
        for (topic, partition), messages in lag_messages.items()
    ]
    return snap


def scrape_worker(url: str, clock: Callable[[], float] = time.monotonic) -> WorkerSnapshot:
    """Scrape ``url`` once; a worker that does not answer gives a snapshot with ``error``."""
    try:
        text = fetch(url)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return WorkerSnapshot(url=url, at=clock(), error=str(reason))
    try:
        return parse_snapshot(url, text, clock())
    except ValueError as exc:  # not Prometheus text
        return WorkerSnapshot(url=url, at=clock(), error=f"unparsable metrics: {exc}")


def outcome_rates(
    previous: WorkerSnapshot | None, current: WorkerSnapshot
) -> dict[str, float] | None:
    """Records per second per outcome between two scrapes of one worker (None: no basis).

    A counter that went down means the worker restarted; its rate counts from zero then
    (as Prometheus' ``rate`` does)."""
    if previous is None or not previous.up or not current.up:
        return None
    elapsed = current.at - previous.at
    if elapsed <= 0:
        return None
    rates = {}
    for outcome in set(previous.outcomes) | set(current.outcomes):
        now = current.outcomes.get(outcome, 0.0)
        before = previous.outcomes.get(outcome, 0.0)
        delta = now - before if now >= before else now
        rates[outcome] = delta / elapsed
    return rates


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _state(value: float | None, names: dict[int, str]) -> Text:
    if value is None:
        return Text("-")
    name = names.get(int(value), f"? ({value:g})")
    return Text(name, style=_STYLES.get(name, ""))


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def render(
    snapshots: Sequence[WorkerSnapshot],
    rates: Sequence[dict[str, float] | None],
    *,
    iteration: int,
    max_partitions: int = 40,
) -> RenderableType:
    """The view of one refresh: workers, outcomes, lag per partition."""
    workers = Table(title="workers", title_justify="left", expand=False)
    for column in ("worker", "up", "ready", "partitions", "in-flight", "circuit"):
        workers.add_column(column, justify="left" if column == "worker" else "right")
    for column in ("governor", "limit", "paused", "records/s"):
        workers.add_column(column, justify="right")
    errors = []
    for snap, rate in zip(snapshots, rates, strict=True):
        if not snap.up:
            workers.add_row(snap.url, Text("DOWN", style="bold red"))
            errors.append(f"{snap.url}: {snap.error}")
            continue
        workers.add_row(
            snap.url,
            Text("up", style="green"),
            "-" if snap.ready is None else ("yes" if snap.ready else "NO"),
            _number(snap.assigned),
            _number(snap.in_flight),
            _state(snap.circuit, CIRCUIT_STATES),
            _state(snap.governor, GOVERNOR_STATES),
            _number(snap.governor_limit),
            _number(snap.paused),
            _rate(None if rate is None else sum(rate.values())),
        )
    if errors:
        workers.caption = "; ".join(errors)

    outcomes = Table(title="records by outcome (all workers)", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("total", justify="right")
    outcomes.add_column("rate", justify="right")
    up = [s for s in snapshots if s.up]
    known = [r for r in rates if r is not None]
    names = list(OUTCOMES) + sorted(
        {o for s in up for o in s.outcomes} - set(OUTCOMES) - {""},
    )
    for outcome in names:
        total = sum(s.outcomes.get(outcome, 0.0) for s in up)
        per_s = sum(r.get(outcome, 0.0) for r in known) if known else None
        outcomes.add_row(outcome, _number(total), _rate(per_s))

    lag = Table(title="lag per partition", title_justify="left")
    for column in ("topic", "partition", "messages", "seconds"):
        lag.add_column(column, justify="left" if column == "topic" else "right")
    if len(snapshots) > 1:
        lag.add_column("worker")
    rows = sorted(
        (p for s in up for p in s.lag),
        key=lambda p: (-p.messages, -p.seconds, p.topic, p.partition),
    )
    for p in rows[:max_partitions]:
        cells = [p.topic, str(p.partition), _number(p.messages), _number(p.seconds, 1)]
        if len(snapshots) > 1:
            cells.append(p.worker)
        lag.add_row(*cells, style="yellow" if p.messages else "")
    if len(rows) > max_partitions:
        lag.caption = f"{len(rows) - max_partitions} more partitions (all with less lag)"
    total_lag = sum(p.messages for p in rows)
    header = Text.assemble(
        ("recon top", "bold"),
        f"  refresh {iteration}  workers {len(up)}/{len(snapshots)} up",
        f"  lag {total_lag:,.0f} messages",
    )
    return Group(header, workers, outcomes, lag)


def _console() -> Console:
    """A console; off a terminal (and without COLUMNS) wide enough for the workers table."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def run_top(
    urls: Sequence[str],
    *,
    interval_s: float = 2.0,
    iterations: int | None = None,
    console: Console | None = None,
    max_partitions: int = 40,
    scrape: Callable[[str], WorkerSnapshot] = scrape_worker,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Refresh every ``interval_s`` until ``iterations`` refreshes (None: until Ctrl-C).

    Returns 0 if every worker answered the last scrape, else 1."""
    for url in urls:
        check_url(url)
    console = console or _console()
    previous: list[WorkerSnapshot | None] = [None] * len(urls)
    snapshots: list[WorkerSnapshot] = []

    def refresh(iteration: int) -> RenderableType:
        nonlocal previous, snapshots
        snapshots = [scrape(url) for url in urls]
        rates = [outcome_rates(p, c) for p, c in zip(previous, snapshots, strict=True)]
        previous = list(snapshots)
        return render(snapshots, rates, iteration=iteration, max_partitions=max_partitions)

    iteration = 0
    try:
        if console.is_terminal:
            with Live(console=console, auto_refresh=False, screen=False) as live:
                while iterations is None or iteration < iterations:
                    iteration += 1
                    live.update(refresh(iteration), refresh=True)
                    if iterations is None or iteration < iterations:
                        sleep(interval_s)
        else:
            while iterations is None or iteration < iterations:
                iteration += 1
                console.print(refresh(iteration))
                if iterations is None or iteration < iterations:
                    sleep(interval_s)
    except KeyboardInterrupt:
        pass
    return 0 if snapshots and all(s.up for s in snapshots) else 1
