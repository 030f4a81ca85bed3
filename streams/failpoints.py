"""Failpoints: crash the worker at a named point, for the tests that prove nothing is lost.

``RECON_FAILPOINT=after_forward:3`` makes the process exit abruptly (``os._exit``, like a
SIGKILL: no drain, no commit) the 3rd time it passes ``after_forward``. Points:

* ``after_apply``   -- the sink has durably applied a batch; its offsets are not committed.
* ``after_forward`` -- retry/DLT copies are acked by the broker; source offsets not committed.

Unset (the default) costs one attribute check per batch.
"""

from __future__ import annotations

import os
import sys

CRASH_EXIT_CODE = 86


class Failpoints:
    def __init__(self, spec: str | None) -> None:
        self._name: str | None = None
        self._remaining = 0
        if spec:
            name, _, count = spec.partition(":")
            self._name = name.strip()
            self._remaining = int(count or "1")
            if self._remaining < 1:
                raise ValueError(f"failpoint count must be >= 1: {spec!r}")

    def hit(self, name: str) -> None:
        if self._name != name:
            return
        self._remaining -= 1
        if self._remaining == 0:
            print(f"failpoint {name}: exiting abruptly", file=sys.stderr, flush=True)
            os._exit(CRASH_EXIT_CODE)
