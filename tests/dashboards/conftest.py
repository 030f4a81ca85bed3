"""The worker-process fixtures of tests/streams, for the dashboards' live check."""

from __future__ import annotations

from tests.streams.conftest import start_worker

__all__ = ["start_worker"]
