"""Contender (c): a Quix Streams application doing the same per-record work.

Bytes in (no Quix deserialization), no state store, no changelog topics; the same short
session timeouts as the other contenders. Only run when ``quixstreams`` is importable.
"""

from __future__ import annotations

import tempfile
from typing import Any

from quixstreams import Application

from bench.common import MAX_POLL_INTERVAL_MS, SESSION_TIMEOUT_MS, MaxVersion, contender_args


def main() -> None:
    args = contender_args(__doc__ or "")
    work = MaxVersion(args.expected)
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        consumer_extra_config={
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
        },
        use_changelog_topics=False,
        auto_create_topics=False,
        state_dir=tempfile.mkdtemp(prefix="recon-bench-quix-"),
        loglevel="WARNING",
    )
    topic = app.topic(args.topic, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)

    def feed(value: Any) -> None:
        if work.feed(value):
            app.stop()

    sdf = sdf.update(feed)
    app.run(timeout=args.timeout)
    if work.result.last_ts:
        work.finish(args.out)


if __name__ == "__main__":
    main()
