"""Contender (a): a raw confluent-kafka ``consume()`` loop, the ceiling for Python on this box."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException

from bench.common import MAX_POLL_INTERVAL_MS, SESSION_TIMEOUT_MS, MaxVersion, contender_args


def main() -> None:
    args = contender_args(__doc__ or "")
    work = MaxVersion(args.expected)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
            "log_level": 3,
        }
    )
    consumer.subscribe([args.topic])
    deadline = time.monotonic() + args.timeout
    done = False
    skip = args.latency_skip
    latencies: list[float] | None = [] if skip >= 0 else None
    try:
        while not done and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                if latencies is not None:
                    seen = work.result.count
                    if seen >= skip:
                        latencies.append(time.time() * 1000 - msg.timestamp()[1])
                    elif seen == skip - 1:
                        args.out.with_suffix(".ready").touch()
                if work.feed(msg.value()):
                    done = True
                    break
        if done:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    work.result.latency_ms = latencies
    work.finish(args.out)


if __name__ == "__main__":
    main()
