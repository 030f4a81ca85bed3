"""Secrets and network defaults, checked on real processes.

* A worker and ``recon produce`` run with a SASL password and a key password in their
  environment (PLAINTEXT, so both are unused: accepted, ignored, warned about by name). The
  markers must appear nowhere: captured output and logs (at debug level), ``/metrics``,
  ``recon --help`` and every subcommand's help, and the settings' repr.
* The worker listens on 127.0.0.1 only, and only for /metrics (its sim:// downstream has no
  network endpoint: a control file); the embedded broker listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from processors.codec import MAGIC
from streams.broker import EmbeddedBroker
from streams.cli import build_parser, main
from streams.ops.observe import TERMINAL_OUTCOMES, outcome_totals
from streams.publish import make_producer, publish
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.streams.conftest import WorkerProcess, settings_env

SASL_MARKER = "zq-SASL-MARKER-81f2"
KEY_MARKER = "zq-KEYPASS-MARKER-5c0e"
SECRETS_ENV = {"RECON_SASL_PASSWORD": SASL_MARKER, "RECON_SSL_KEYFILE_PASSWORD": KEY_MARKER}
EVENTS = 30


def _assert_clean(where: str, text: str) -> None:
    for marker in (SASL_MARKER, KEY_MARKER):
        assert marker not in text, f"secret found in {where}"


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _events_file(path: Path) -> Path:
    lines = [
        json.dumps(
            {
                "event_id": f"e-{n}",
                "entity_id": f"acct-{n % 7}",
                "version": n,
                "op": "upsert",
                "fields": {"balance": n * 1.5},
                "occurred_at": "2026-11-22T10:00:00Z",
                "source": "billing",
            }
        )
        for n in range(1, EVENTS + 1)
    ]
    lines.append('{"event_id": "bad id", "entity_id": "x"}')  # rejected by `recon produce`
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _wait_settled(worker: WorkerProcess, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    settled = 0
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log()[-3000:]
        totals = outcome_totals([worker.metrics_url])
        settled = sum(totals[o] for o in TERMINAL_OUTCOMES)
        if settled >= expected:
            return settled
        time.sleep(0.5)
    raise AssertionError(f"worker settled {settled}/{expected} in {timeout_s}s")


@pytest.mark.broker
def test_secrets_appear_nowhere_and_the_worker_listens_on_loopback_only(
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings.model_copy(
        update={"sink_url": f"sim://?db={tmp_path / 'sim.db'}&control={tmp_path / 'ctl.json'}"}
    )
    ensure_topics(settings)
    worker = start_worker(settings, RECON_LOG_LEVEL="debug", **SECRETS_ENV)

    produced = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "produce",
            "--file",
            str(_events_file(tmp_path / "e.jsonl")),
        ],
        env=settings_env(settings, **SECRETS_ENV),
        capture_output=True,
        timeout=120,
        check=False,
    )
    produce_output = (produced.stdout + produced.stderr).decode("utf-8", "replace")
    assert produced.returncode == 1, produce_output  # one line rejected
    assert f"published {EVENTS} to {settings.topic}; rejected 1" in produce_output
    # Poison pills too, so the worker logs dead-lettering (with error messages) at least once.
    report = publish(make_producer(settings), settings.topic, [(b"k", MAGIC + b"junk")] * 3)
    assert report.published == 3

    _wait_settled(worker, EVENTS + 3, timeout_s=120)
    with urllib.request.urlopen(worker.metrics_url, timeout=5) as response:
        metrics_text = response.read().decode("utf-8")
    listening = _listening(worker.proc.pid)
    assert worker.stop() == 0
    log = worker.log()

    # Network: /metrics on 127.0.0.1 and nothing else listening (the sim:// sink included).
    assert listening == {("127.0.0.1", worker.metrics_port)}

    # Secrets: ignored with a warning that names them, and found nowhere.
    assert "RECON_SASL_PASSWORD set but security_protocol=PLAINTEXT does not use SASL" in log
    assert "RECON_SSL_KEYFILE_PASSWORD set but security_protocol=PLAINTEXT does not use TLS" in log
    assert "recon_records_outcome_total" in metrics_text
    _assert_clean("the worker's log", log)
    _assert_clean("recon produce's output", produce_output)
    _assert_clean("/metrics", metrics_text)

    for name, value in SECRETS_ENV.items():
        monkeypatch.setenv(name, value)
    loaded = Settings()
    _assert_clean("repr(settings)", repr(loaded) + str(loaded) + loaded.model_dump_json())

    top = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--help"],
        env=settings_env(settings, **SECRETS_ENV),
        capture_output=True,
        timeout=60,
        check=True,
    )
    _assert_clean("recon --help", (top.stdout + top.stderr).decode("utf-8", "replace"))
    subcommands = next(
        a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    assert {"worker", "produce", "topics", "broker", "demo"} <= set(subcommands)
    for command in subcommands:
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        captured = capsys.readouterr()
        assert "usage: recon" in captured.out
        _assert_clean(f"recon {command} --help", captured.out + captured.err)


def test_metrics_and_the_embedded_broker_bind_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    assert build_parser().parse_args(["broker"]).host == "127.0.0.1"
    with EmbeddedBroker() as broker:
        assert broker.pid is not None
        assert _listening(broker.pid) == {("127.0.0.1", broker.port)}


_NETWORK_MODULES = {"socket", "http", "urllib.request", "asyncio", "ssl", "socketserver"}


def test_the_simulated_downstream_has_no_network_endpoint() -> None:
    # sim:// is SQLite plus a JSON control file: neither it nor what it wraps imports a
    # networking module (the worker-level check above shows no extra listener at run time).
    root = Path(__file__).resolve().parents[2] / "processors" / "sinks"
    for name in ("sim.py", "sqlite.py", "base.py"):
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {
            m for m in imported if m.split(".")[0] in _NETWORK_MODULES or m in _NETWORK_MODULES
        }, name
