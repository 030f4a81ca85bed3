"""Every setting recon-streams reads, in one place.

Values come from command-line flags (the CLI passes them as overrides) or from ``RECON_*``
environment variables. No other module reads the environment: each receives the
``Settings`` object (or the few fields it needs) from its caller.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Parse ``"250ms"``, ``"1s"``, ``"1.5m"``, ``"2h"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 500ms, 1s, 10s, 1m)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_durations(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of durations, e.g. ``"1s,10s,60s"``."""
    parts = [p for p in text.split(",") if p.strip()]
    return tuple(parse_duration(p) for p in parts)


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class Settings(BaseSettings):
    """recon-streams settings; environment variables are ``RECON_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="RECON_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = Field("recon.events", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    group: str = Field("recon-processor", pattern=r"^[A-Za-z0-9._-]{1,200}$")
    partitions: int = Field(4, ge=1, le=1024, description="partitions for topics we create")
    replication_factor: int = Field(1, ge=1, le=7)

    # Consumer-group timing. Short defaults: a first join then takes ~3 s on the embedded
    # broker instead of ~30 s (see BROKER.md, gap 4), and a dead worker's partitions move on
    # within seconds. Raise them on a busy production cluster.
    session_timeout_s: float = Field(6.0, ge=1.0, le=300.0)
    heartbeat_interval_s: float = Field(1.0, ge=0.1, le=60.0)
    rebalance_timeout_s: float = Field(10.0, ge=1.0, le=600.0)

    # How often Faust commits acked offsets (seconds, and every N acked records).
    commit_interval_s: float = Field(1.0, ge=0.05, le=60.0)
    commit_every: int = Field(10_000, ge=1, le=1_000_000)

    # --- Processing --------------------------------------------------------------------------
    sink_url: str = "sqlite:///recon.db"
    batch_max: int = Field(500, ge=1, le=100_000, description="records per apply batch")
    batch_within_s: float = Field(0.05, ge=0.0, le=10.0, description="max wait to fill a batch")
    # In-place attempts for a transient failure before the record is routed to a retry tier.
    inline_attempts: int = Field(3, ge=1, le=20)
    inline_backoff_s: float = Field(0.2, ge=0.0, le=30.0)

    # --- Failure routing ---------------------------------------------------------------------
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 10.0, 60.0)
    retry_jitter: float = Field(0.1, ge=0.0, le=1.0, description="full jitter fraction")
    # Exception class names (besides the domain's own) that are permanent: straight to the DLT.
    permanent_errors: Annotated[frozenset[str], NoDecode] = frozenset()
    # Retry budget: retry copies <= ratio x records consumed over the window (+ floor).
    retry_budget_enabled: bool = True
    retry_budget_ratio: float = Field(0.2, ge=0.0, le=10.0)
    retry_budget_window_s: float = Field(60.0, ge=1.0, le=3600.0)
    retry_budget_floor: int = Field(10, ge=0, le=1_000_000)
    # Circuit breaker on the downstream (see streams/circuit.py).
    circuit_enabled: bool = True
    circuit_window_s: float = Field(10.0, ge=0.5, le=600.0)
    circuit_min_calls: int = Field(5, ge=1, le=10_000)
    circuit_failure_threshold: float = Field(0.5, gt=0.0, le=1.0)
    circuit_open_s: float = Field(1.0, ge=0.05, le=600.0)
    circuit_max_open_s: float = Field(30.0, ge=0.05, le=3600.0)
    circuit_probe_records: int = Field(10, ge=1, le=100_000)

    # Testing only: crash at a named point (streams/failpoints.py), e.g. "after_forward:3".
    failpoint: str | None = Field(None, pattern=r"^(after_apply|after_forward)(:[0-9]+)?$")

    # --- Operations --------------------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9308, ge=0, le=65535)
    log_level: str = Field("info", pattern=r"^(?i:debug|info|warning|error)$")

    # --- Security (one model for every client; see streams/kafka/client_config.py) ---------
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: SecretStr | None = None

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _parse_retry_delays(cls, value: object) -> object:
        if isinstance(value, str):
            value = parse_durations(value)
        return value

    @field_validator("permanent_errors", mode="before")
    @classmethod
    def _parse_names(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(n.strip() for n in value.split(",") if n.strip())
        return value

    @field_validator("retry_delays")
    @classmethod
    def _check_retry_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 20:
            raise ValueError("at most 20 retry tiers")
        if any(d <= 0 for d in value):
            raise ValueError("retry delays must be positive")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        sasl = self.security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )
        if sasl and (self.sasl_mechanism is None or not self.sasl_username):
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism and "
                "sasl_username (RECON_SASL_MECHANISM, RECON_SASL_USERNAME)"
            )
        if sasl and self.sasl_password is None:
            raise ValueError("SASL needs a password (RECON_SASL_PASSWORD)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self

    # --- Derived names (topics live in streams/topics.py; these are the settings' view) -----
    @property
    def retry_topics(self) -> list[str]:
        return [f"{self.topic}.retry.{n}" for n in range(1, len(self.retry_delays) + 1)]

    @property
    def dlt_topic(self) -> str:
        return f"{self.topic}.dlt"
