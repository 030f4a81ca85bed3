"""Every setting recon-streams reads, in one place.

Values come from command-line flags (the CLI passes them as overrides) or from ``RECON_*``
environment variables. No other module reads the environment: each receives the
``Settings`` object (or the few fields it needs) from its caller.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from processors.event import EventLimits

log = logging.getLogger(__name__)

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


def redact_url(url: str) -> str:
    """``url`` with any password (``user:PASSWORD@`` or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        redacted = url
        if parts.password is not None:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            redacted = redacted.replace(parts.netloc, f"{user}:***@{hostport}", 1)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*"
            )
            redacted = redacted.replace(parts.query, query, 1)
        return redacted
    except ValueError:
        return "<unparsable URL>"


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

    # hide_input_in_errors: a ValidationError's text must never echo a value (a password
    # passed in the environment would otherwise appear in it).
    model_config = SettingsConfigDict(
        env_prefix="RECON_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

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
    # Fast path (streams/kafka/fast_consumer.py): the main and lane topics' fetched records go
    # to the batch processor in bulk instead of one by one through Faust's streams.
    fast_path: bool = True
    # In-place attempts for a transient failure before the record is routed to a retry tier.
    inline_attempts: int = Field(3, ge=1, le=20)
    inline_backoff_s: float = Field(0.2, ge=0.0, le=30.0)
    # Cap of that backoff; also the pace of retrying a batch held by the retry budget (the
    # circuit breaker, not this backoff, protects a downstream that keeps failing).
    inline_backoff_max_s: float = Field(1.0, ge=0.0, le=60.0)

    # --- Failure routing ---------------------------------------------------------------------
    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 10.0, 60.0)
    retry_jitter: float = Field(0.1, ge=0.0, le=1.0, description="full jitter fraction")
    # Per-entity ordering (streams/failures/ordering.py): once an entity has a record waiting
    # in a retry tier, its later records are parked behind it, so its events apply in order.
    # Off by default: version-guarded apply already makes out-of-order delivery safe (a late
    # older event is a no-op), and ordering costs: a slow or poisoned head delays every later
    # event of its entity by the tier delays, parked followers share the head's tier path (so
    # they get fewer attempts), and every assignment rescans the retry tiers.
    entity_ordering: bool = False
    # Exception class names (besides the domain's own) that are permanent: straight to the DLT.
    permanent_errors: Annotated[frozenset[str], NoDecode] = frozenset()
    # Retry budget: retry copies <= ratio x records consumed over the window (+ floor).
    retry_budget_enabled: bool = True
    retry_budget_ratio: float = Field(0.2, ge=0.0, le=10.0)
    retry_budget_window_s: float = Field(60.0, ge=1.0, le=3600.0)
    retry_budget_floor: int = Field(10, ge=0, le=1_000_000)
    # Circuit breaker on the downstream (see streams/failures/circuit.py).
    circuit_enabled: bool = True
    circuit_window_s: float = Field(10.0, ge=0.5, le=600.0)
    circuit_min_calls: int = Field(5, ge=1, le=10_000)
    circuit_failure_threshold: float = Field(0.5, gt=0.0, le=1.0)
    circuit_open_s: float = Field(1.0, ge=0.05, le=600.0)
    circuit_max_open_s: float = Field(10.0, ge=0.05, le=3600.0)
    circuit_probe_records: int = Field(10, ge=1, le=100_000)

    # --- Adaptive backpressure (streams/backpressure/governor.py; docs/backpressure.md) ---
    # Off: fixed batches of batch_max, no pausing, no pacing (the behaviour before the governor).
    governor_enabled: bool = True
    governor_tick_s: float = Field(0.1, ge=0.01, le=5.0, description="one sample per tick")
    governor_window_s: float = Field(1.0, ge=0.1, le=60.0, description="latency window")
    governor_window_min_samples: int = Field(10, ge=1, le=10_000)
    # Enter DEGRADED: latency > factor x baseline for enter_samples ticks in a row, spanning
    # enter_calls distinct slow calls (or one call running for stall_s).
    governor_latency_factor: float = Field(10.0, ge=1.5, le=1000.0)
    governor_enter_samples: int = Field(4, ge=1, le=1000)
    governor_enter_calls: int = Field(2, ge=1, le=1000)
    governor_stall_s: float = Field(2.0, ge=0.01, le=3600.0)
    # Stop the normal lane too: latency > severe_factor x baseline for escalate_samples ticks.
    governor_severe_factor: float = Field(20.0, ge=1.5, le=10_000.0)
    governor_escalate_samples: int = Field(5, ge=1, le=10_000)
    # Leave DEGRADED: window p95 <= recover_factor x baseline for recover_samples ticks.
    governor_recover_factor: float = Field(4.0, ge=1.0, le=1000.0)
    governor_recover_samples: int = Field(10, ge=1, le=10_000)
    governor_resume_step_samples: int = Field(5, ge=1, le=10_000, description="between lanes")
    governor_settle_samples: int = Field(10, ge=1, le=10_000, description="RECOVERY->NORMAL")
    governor_idle_recover_s: float = Field(5.0, ge=0.1, le=3600.0)
    governor_rebaseline_s: float = Field(300.0, ge=1.0, le=86_400.0)
    governor_error_rate_max: float = Field(0.2, gt=0.0, le=1.0)
    governor_error_window_s: float = Field(5.0, ge=0.1, le=3600.0)
    governor_error_min_calls: int = Field(10, ge=1, le=100_000)
    governor_loop_lag_max_s: float = Field(0.5, ge=0.01, le=60.0)
    governor_cpu_max_percent: float = Field(90.0, ge=1.0, le=10_000.0)
    governor_rss_max_mb: float = Field(0.0, ge=0.0, le=1_048_576.0, description="0: no limit")
    # The in-flight limit (records, all lanes) and how it adapts (AIMD around the knee).
    governor_limit_min: int = Field(50, ge=1, le=1_000_000)
    governor_limit_max: int = Field(2000, ge=1, le=1_000_000)
    governor_limit_initial: int = Field(500, ge=1, le=1_000_000)
    governor_batch_max: int = Field(1000, ge=1, le=100_000)
    governor_critical_reserve: int = Field(25, ge=0, le=1_000_000)
    governor_increase_step: int = Field(25, ge=1, le=1_000_000)
    governor_knee_factor: float = Field(2.0, gt=1.0, le=1000.0)
    governor_knee_backoff: float = Field(0.9, ge=0.1, le=0.99)
    governor_degrade_backoff: float = Field(0.5, ge=0.05, le=0.99)
    governor_decrease_interval_samples: int = Field(10, ge=1, le=10_000)
    governor_saturation: float = Field(0.8, ge=0.1, le=1.0)
    governor_backlog_records: int = Field(100, ge=0, le=100_000_000)
    governor_baseline_samples: int = Field(50, ge=3, le=10_000)
    governor_warmup_samples: int = Field(5, ge=1, le=10_000)
    governor_probe_interval_s: float = Field(30.0, ge=1.0, le=86_400.0)
    governor_probe_samples: int = Field(3, ge=1, le=1000)
    governor_pacing_factor: float = Field(1.0, ge=0.0, le=10.0)
    governor_pacing_max_s: float = Field(1.0, ge=0.0, le=60.0)
    # A JSON-lines timeline of the governor, one line per tick (benchmarks and tests).
    governor_trace_path: str | None = None
    # The worker consumer's fetch long-poll wait (streams/kafka/fetch_wait.py); None keeps
    # Faust's hard-coded 1500 ms. The embedded broker answers fetches about every wait/2
    # whether data arrived or not, so Faust's value puts ~0.75 s bursts under every latency;
    # Apache Kafka answers as soon as data is there, so this only paces idle polls.
    fetch_max_wait_ms: int | None = Field(100, ge=1, le=60_000)

    # Testing only: crash at a named point (streams/failpoints.py), e.g. "after_forward:3".
    failpoint: str | None = Field(None, pattern=r"^(after_apply|after_forward)(:[0-9]+)?$")

    # --- Input limits (processors.event.EventLimits; a record over one is dead-lettered) ---
    max_record_bytes: int = Field(1_048_576, ge=64, le=64 * 1_048_576)
    max_fields: int = Field(256, ge=0, le=100_000)
    max_field_name_len: int = Field(128, ge=1, le=65_536)
    max_string_len: int = Field(8192, ge=1, le=64 * 1_048_576)
    max_id_len: int = Field(256, ge=1, le=65_536)

    # --- Operations --------------------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9308, ge=0, le=65535)
    # /readyz turns unready when an assigned partition has lag and no progress for this long
    # (retry tier n gets its delay on top: it holds records until they are due).
    ready_stall_s: float = Field(30.0, gt=0.0, le=3600.0)
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
    def _check_governor(self) -> Settings:
        """Cross-field ranges of the governor (the same as GovernorPolicy's own checks)."""
        problems = []
        if not self.governor_limit_min <= self.governor_limit_initial <= self.governor_limit_max:
            problems.append("governor_limit_min <= governor_limit_initial <= governor_limit_max")
        if self.governor_critical_reserve >= self.governor_limit_min:
            problems.append("governor_critical_reserve < governor_limit_min")
        if self.governor_recover_factor >= self.governor_latency_factor:
            problems.append("governor_recover_factor < governor_latency_factor (hysteresis)")
        if self.governor_knee_factor > self.governor_recover_factor:
            problems.append("governor_knee_factor <= governor_recover_factor")
        if self.governor_severe_factor < self.governor_latency_factor:
            problems.append("governor_severe_factor >= governor_latency_factor")
        if problems:
            raise ValueError("governor settings need " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Reject incomplete security settings; warn about (and ignore) settings the chosen
        protocol does not use -- e.g. RECON_SASL_PASSWORD left in the environment of a
        PLAINTEXT run. Messages name settings, never their values (a value may be a secret).
        """
        protocol = self.security_protocol
        sasl = protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        tls = protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)
        sasl_given = {
            "RECON_SASL_MECHANISM": self.sasl_mechanism is not None,
            "RECON_SASL_USERNAME": bool(self.sasl_username),
            "RECON_SASL_PASSWORD": self.sasl_password is not None
            and bool(self.sasl_password.get_secret_value()),
        }
        tls_given = {
            "RECON_SSL_CAFILE": bool(self.ssl_cafile),
            "RECON_SSL_CERTFILE": bool(self.ssl_certfile),
            "RECON_SSL_KEYFILE": bool(self.ssl_keyfile),
            "RECON_SSL_KEYFILE_PASSWORD": self.ssl_keyfile_password is not None,
        }
        if sasl:
            missing = [name for name, given in sasl_given.items() if not given]
            if missing:
                raise ValueError(f"security_protocol={protocol} needs {', '.join(missing)}")
            if protocol is SecurityProtocol.SASL_PLAINTEXT and (
                self.sasl_mechanism is SaslMechanism.PLAIN
            ):
                log.warning(
                    "SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted; "
                    "prefer SASL_SSL (or a SCRAM mechanism)"
                )
        elif unused := [name for name, given in sasl_given.items() if given]:
            log.warning(
                "%s set but security_protocol=%s does not use SASL: ignored",
                ", ".join(unused),
                protocol,
            )
        if tls:
            if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
                raise ValueError(
                    "ssl_certfile and ssl_keyfile go together (RECON_SSL_CERTFILE, "
                    "RECON_SSL_KEYFILE)"
                )
            if self.ssl_keyfile_password is not None and not self.ssl_keyfile:
                raise ValueError("RECON_SSL_KEYFILE_PASSWORD given without RECON_SSL_KEYFILE")
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, name)
                if path and not Path(path).is_file():
                    raise ValueError(f"{name}: no such file: {path}")
        elif unused := [name for name, given in tls_given.items() if given]:
            log.warning(
                "%s set but security_protocol=%s does not use TLS: ignored",
                ", ".join(unused),
                protocol,
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # SecretStr fields already print as '**********'; a sink URL may carry a password.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name == "sink_url" else value)

    @property
    def event_limits(self) -> EventLimits:
        """The input limits every decoder and the publisher apply (``RECON_MAX_*``)."""
        return EventLimits(
            max_record_bytes=self.max_record_bytes,
            max_fields=self.max_fields,
            max_field_name_len=self.max_field_name_len,
            max_string_len=self.max_string_len,
            max_id_len=self.max_id_len,
        )

    # --- Derived names (topics live in streams/topics.py; these are the settings' view) -----
    @property
    def retry_topics(self) -> list[str]:
        return [f"{self.topic}.retry.{n}" for n in range(1, len(self.retry_delays) + 1)]

    @property
    def dlt_topic(self) -> str:
        return f"{self.topic}.dlt"
