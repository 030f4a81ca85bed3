"""The worker consumer's fetch long-poll wait (``RECON_FETCH_MAX_WAIT_MS``).

Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``, hard-coded. On a broker
that answers a fetch as soon as data is there (Apache Kafka) that is only the idle poll. The
embedded broker (Tansu 0.6) answers a fetch about every ``fetch_max_wait_ms / 2`` whether data
arrived or not (measured with a bare aiokafka consumer, 20 records/s on 4 partitions: e2e p99
753 ms at 1500, 253 ms at 500, 60 ms at 100; docs/backpressure.md), so with Faust's value a
worker receives records in bursts ~0.75 s apart: a floor under every lane's latency, critical
included, and under how soon a downstream slowdown can be seen.

Setting it changes only the wait of the running consumer's fetch requests (aiokafka reads
``Fetcher._fetch_max_wait_ms`` for every request it builds). It reaches into private
attributes, so it checks for them and leaves the consumer alone -- with a warning -- when this
aiokafka/Faust does not have them. Unset: Faust's 1500 ms, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def set_fetch_max_wait(app: Any, wait_ms: int | None) -> bool:
    """Apply ``wait_ms`` to the started worker consumer; True if applied."""
    if wait_ms is None:
        return False
    try:
        fetcher = app.consumer._thread._consumer._fetcher
        before = fetcher._fetch_max_wait_ms
    except AttributeError:
        log.warning("fetch_max_wait_ms=%d not applied: unknown Faust/aiokafka internals", wait_ms)
        return False
    if not isinstance(before, int):
        log.warning("fetch_max_wait_ms=%d not applied: unexpected %r", wait_ms, before)
        return False
    fetcher._fetch_max_wait_ms = int(wait_ms)
    log.info("consumer fetch_max_wait_ms %d -> %d", before, wait_ms)
    return True
