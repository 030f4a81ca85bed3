"""Prometheus metrics exported by a worker (names prefixed ``recon_``).

One module-level registry per process: a worker is one process. ``serve`` exposes it on
``metrics_host:metrics_port`` (127.0.0.1 unless configured otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

if TYPE_CHECKING:
    from streams.ops.server import Check, OpsServer

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

records_consumed = Counter(
    "recon_records_consumed_total", "Records consumed", ["topic"], registry=REGISTRY
)
records_outcome = Counter(
    "recon_records_outcome_total",
    "Records by outcome of this attempt: applied, duplicate, stale, retried, parked "
    "(entity ordering), dead_lettered",
    ["topic", "outcome", "reason"],
    registry=REGISTRY,
)
apply_seconds = Histogram(
    "recon_apply_duration_seconds",
    "Time to apply one batch through the sink (including in-place retries)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
end_to_end_seconds = Histogram(
    "recon_end_to_end_latency_seconds",
    "Record timestamp to applied (or forwarded), per record",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
batch_records = Histogram(
    "recon_batch_records",
    "Records per processed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
    registry=REGISTRY,
)
in_flight_records = Gauge(
    "recon_in_flight_records", "Records taken from Kafka and not yet acked", registry=REGISTRY
)
records_redelivered = Counter(
    "recon_records_redelivered_total",
    "Lane records settled again in this process (after a rewind or rebalance; harmless, "
    "idempotent apply) -- already counted in recon_records_outcome_total",
    registry=REGISTRY,
)
forward_failures = Counter(
    "recon_forward_failures_total",
    "Failed attempts to produce a retry/DLT copy (each is retried; nothing is acked before)",
    registry=REGISTRY,
)
build_info = Info("recon_build", "recon-streams build information", registry=REGISTRY)


def serve(
    host: str,
    port: int,
    *,
    liveness: Check | None = None,
    readiness: Check | None = None,
) -> OpsServer | None:
    """Serve /metrics, /healthz and /readyz on host:port (port 0 disables the endpoint).

    Without checks, /healthz and /readyz answer 200 (a process that serves at all is up).
    """
    if not port:
        return None
    from streams.ops.server import OpsServer, always_ok

    return OpsServer(host, port, REGISTRY, liveness or always_ok, readiness or always_ok).start()


# --- consumer lag, assignment and commits (fed by streams/ops/worker_health.py) ------------------
consumer_lag_messages = Gauge(
    "recon_consumer_lag_messages",
    "Fetch high watermark minus the next offset to process, per assigned partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
consumer_lag_seconds = Gauge(
    "recon_consumer_lag_seconds",
    "While lagging: now minus the timestamp of the last processed record (else 0)",
    ["topic", "partition"],
    registry=REGISTRY,
)
assigned_partitions = Gauge(
    "recon_assigned_partitions", "Partitions assigned to this worker", registry=REGISTRY
)
rebalances = Counter(
    "recon_rebalances_total",
    "Consumer group rebalances this worker went through",
    registry=REGISTRY,
)
commit_latency_seconds = Histogram(
    "recon_commit_latency_seconds",
    "Duration of offset commits that moved at least one committed offset",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ready = Gauge("recon_ready", "1 when /readyz answers ready, else 0", registry=REGISTRY)


circuit_state = Gauge(
    "recon_circuit_state",
    "Downstream circuit breaker: 0 closed, 1 half-open, 2 open",
    registry=REGISTRY,
)
circuit_opened = Counter(
    "recon_circuit_opened_total",
    "Times the downstream circuit opened (closed or half-open -> open)",
    registry=REGISTRY,
)
retry_budget_holds = Counter(
    "recon_retry_budget_holds_total",
    "Times a failed batch was held in place because the retry budget was spent",
    registry=REGISTRY,
)


# --- adaptive backpressure (backpressure/governor.py, fed by backpressure/signals.py) -----
governor_state = Gauge(
    "recon_governor_state",
    "Backpressure governor: 0 normal, 1 degraded, 2 recovery, -1 switched off",
    registry=REGISTRY,
)
governor_transitions = Counter(
    "recon_governor_transitions_total",
    "Governor state changes, by from/to state and reason",
    ["from", "to", "reason"],
    registry=REGISTRY,
)
governor_limit = Gauge(
    "recon_governor_limit", "Governor's max records in flight (all lanes)", registry=REGISTRY
)
governor_batch_size = Gauge(
    "recon_governor_batch_size", "Governor's max records per apply call", registry=REGISTRY
)
governor_pacing_seconds = Gauge(
    "recon_governor_pacing_seconds",
    "Delay before each non-critical chunk (0 unless degraded)",
    registry=REGISTRY,
)
governor_baseline_seconds = Gauge(
    "recon_governor_baseline_seconds",
    "Baseline apply latency (median of small calls while normal)",
    registry=REGISTRY,
)
governor_latency_p95_seconds = Gauge(
    "recon_governor_latency_p95_seconds",
    "p95 apply latency over the governor's window",
    registry=REGISTRY,
)
paused_partitions = Gauge(
    "recon_paused_partitions",
    "Partitions paused by the governor (stopped lanes)",
    registry=REGISTRY,
)
lane_running = Gauge(
    "recon_lane_running", "1 when the lane runs, 0 when stopped", ["lane"], registry=REGISTRY
)
lane_records = Counter(
    "recon_lane_records_total",
    "Records settled per priority lane (retry copies count in their original lane)",
    ["lane"],
    registry=REGISTRY,
)
lane_end_to_end_seconds = Histogram(
    "recon_lane_end_to_end_seconds",
    "Record timestamp to settled, per priority lane",
    ["lane"],
    buckets=(
        0.01,
        0.025,
        0.05,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.8,
        1,
        1.25,
        1.5,
        2,
        2.5,
        3,
        4,
        5,
        7.5,
        10,
        15,
        20,
        30,
        60,
    ),
    registry=REGISTRY,
)
lane_lag_records = Gauge(
    "recon_lane_lag_records",
    "Fetch high watermark minus next offset to process, summed per lane",
    ["lane"],
    registry=REGISTRY,
)
in_flight_peak_records = Gauge(
    "recon_in_flight_peak_records",
    "Highest number of records in flight during the last governor tick",
    registry=REGISTRY,
)
event_loop_lag_seconds = Gauge(
    "recon_event_loop_lag_seconds",
    "How late the governor's tick woke up (scheduled vs actual)",
    registry=REGISTRY,
)
process_cpu_percent = Gauge(
    "recon_process_cpu_percent", "Worker process CPU, percent of one core", registry=REGISTRY
)
process_rss_bytes = Gauge(
    "recon_process_rss_bytes", "Worker process resident set size", registry=REGISTRY
)
