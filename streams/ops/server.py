"""The worker's operations endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

A stdlib HTTP server in a daemon thread, bound to ``metrics_host`` (127.0.0.1 unless
configured). It runs outside the worker's event loop on purpose: ``/metrics`` keeps
answering while the loop is busy, and ``/healthz`` can *measure* the loop -- it schedules a
callback on it and waits -- instead of depending on it to answer at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# (healthy?, JSON body)
Check = Callable[[], tuple[bool, dict[str, Any]]]


def always_ok() -> tuple[bool, dict[str, Any]]:
    return True, {"ok": True}


def event_loop_liveness(loop: asyncio.AbstractEventLoop, timeout_s: float = 2.0) -> Check:
    """A check that passes when ``loop`` runs a callback within ``timeout_s``."""

    def check() -> tuple[bool, dict[str, Any]]:
        if loop.is_closed() or not loop.is_running():
            return False, {"alive": False, "reason": "event loop not running"}
        answered = threading.Event()
        started = time.monotonic()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed between the check and the call
            return False, {"alive": False, "reason": "event loop closed"}
        if not answered.wait(timeout_s):
            return False, {"alive": False, "reason": f"event loop did not answer in {timeout_s}s"}
        latency_ms = (time.monotonic() - started) * 1000
        return True, {"alive": True, "loop_latency_ms": round(latency_ms, 3)}

    return check


class OpsServer:
    """Serves the three endpoints until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Check = always_ok,
        readiness: Check = always_ok,
    ) -> None:
        self._registry = registry
        self.liveness = liveness
        self.readiness = readiness
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> OpsServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="recon-ops-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                    elif path == "/healthz":
                        self._send_check(server.liveness)
                    elif path == "/readyz":
                        self._send_check(server.readiness)
                    else:
                        self._send_json(404, {"error": f"no such path: {path}"})
                except Exception as exc:  # a broken check must not kill the server thread
                    log.exception("ops endpoint %s failed", path)
                    self._send_json(500, {"error": type(exc).__name__})

            def _send_check(self, check: Check) -> None:
                ok, body = check()
                self._send_json(200 if ok else 503, body)

            def _send_json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the worker's log

        return Handler
