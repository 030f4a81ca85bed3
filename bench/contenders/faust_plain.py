"""Contender (b): a plain Faust agent, ``async for value in stream``, same per-record work.

Uses the worker's own Faust options (``streams.app.faust_app_options``: raw serializers, short
session timeouts, earliest reset). Writes its result file once done; the bench then stops it.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from bench.common import MaxVersion, contender_args
from streams.app import faust_app_options
from streams.settings import Settings


def main() -> None:
    args = contender_args(__doc__ or "")
    settings = Settings(
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        group=args.group,
        metrics_port=0,
    )
    app = faust.App(args.group, **faust_app_options(settings))
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    work = MaxVersion(args.expected)

    @app.agent(topic, name="bench-plain")
    async def consume(stream: Any) -> None:
        finished = False
        async for value in stream:
            if not finished and work.feed(value):
                finished = True
                work.finish(args.out)

    logging.getLogger("faust").setLevel(logging.WARNING)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
