"""Prometheus metrics exported by a worker (names prefixed ``recon_``).

One module-level registry per process: a worker is one process. ``serve`` exposes it on
``metrics_host:metrics_port`` (127.0.0.1 unless configured otherwise).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

records_consumed = Counter(
    "recon_records_consumed_total", "Records consumed", ["topic"], registry=REGISTRY
)
records_outcome = Counter(
    "recon_records_outcome_total",
    "Records by final outcome of this attempt: applied, duplicate, stale, retried, dead_lettered",
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
forward_failures = Counter(
    "recon_forward_failures_total",
    "Failed attempts to produce a retry/DLT copy (each is retried; nothing is acked before)",
    registry=REGISTRY,
)
build_info = Info("recon_build", "recon-streams build information", registry=REGISTRY)


def serve(host: str, port: int) -> None:
    """Serve /metrics on host:port (port 0 disables the endpoint)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)


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
