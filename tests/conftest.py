"""Shared fixtures: a Kafka-compatible broker and a PostgreSQL URL.

Broker, in order: ``RECON_BOOTSTRAP_SERVERS`` if set; else a testcontainers Kafka when a
Docker engine answers; else the embedded broker (Tansu), started once per session on a free
port and stopped at the end. Every test gets its own topic names and group, so tests never
see each other's records.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from streams.settings import Settings

PG_URL = os.environ.get("RECON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# `make fuzz` (HYPOTHESIS_PROFILE=fuzz): many more examples for the fuzz tests, no deadline.
# Tests that pin max_examples themselves keep their own count.
hypothesis_settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("RECON_FUZZ_EXAMPLES", "3000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    hypothesis_settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def bootstrap_servers() -> Iterator[str]:
    configured = os.environ.get("RECON_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def settings(bootstrap_servers: str, tmp_path: object) -> Settings:
    """Settings for one test: unique topic and group, short timeouts, a fresh SQLite sink."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        bootstrap_servers=bootstrap_servers,
        topic=f"t{run}.events",
        group=f"g{run}",
        sink_url=f"sqlite:///{tmp_path}/sink.db",
        metrics_port=0,
        retry_delays=(0.5, 1.0),
        commit_interval_s=0.5,
    )


def postgres_url_or_skip() -> str:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    return PG_URL
