"""Running real ``recon worker`` processes against the test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.kafka.offsets import committed_offsets
from streams.settings import Settings


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def kill(self) -> None:
        """SIGKILL: no drain, no final commit -- the crash case."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "RECON_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "RECON_TOPIC": settings.topic,
        "RECON_GROUP": settings.group,
        "RECON_SINK_URL": settings.sink_url,
        "RECON_RETRY_DELAYS": ",".join(f"{d}s" for d in settings.retry_delays),
        "RECON_COMMIT_INTERVAL_S": str(settings.commit_interval_s),
        "RECON_LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a ``recon worker`` subprocess for ``settings``; all are killed at the end."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, **env: str) -> WorkerProcess:
        port = free_port()
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=settings_env(settings, RECON_METRICS_PORT=str(port), **env),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        worker = WorkerProcess(proc, port, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def wait_for_commits(
    settings: Settings,
    topic: str,
    expected: Mapping[int, int],
    timeout_s: float,
    workers: list[WorkerProcess] | None = None,
) -> dict[int, int]:
    """Poll the group's committed offsets on ``topic`` until they reach ``expected``."""
    deadline = time.monotonic() + timeout_s
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = committed_offsets(settings, settings.group, topic)
        if all(committed.get(p, 0) >= end for p, end in expected.items()):
            return committed
        for worker in workers or []:
            if worker.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{worker.log()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"offsets not committed in {timeout_s}s: {committed} < {dict(expected)}")
