"""The embedded broker launcher and ``recon broker``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil

from streams.broker import EmbeddedBroker, broker_answers, free_port


def test_embedded_broker_starts_answers_and_stops() -> None:
    with EmbeddedBroker() as broker:
        assert broker_answers(broker.bootstrap_servers)
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
    assert not broker_answers(broker.bootstrap_servers, timeout_s=0.5)


def test_recon_broker_stops_its_child_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not broker_answers(f"127.0.0.1:{port}", timeout_s=0.5):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the broker runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
