"""``recon``: the command line, a thin layer over the modules.

Settings come from flags (for the common ones) or ``RECON_*`` environment variables.
Secrets (SASL password, key password) are read from the environment only -- never flags,
which would put them in shell history and ``ps`` output.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from streams.settings import Settings

log = logging.getLogger("recon")

# flag -> Settings field, for flags shared by several commands
_COMMON_FLAGS: dict[str, tuple[str, type, str]] = {
    "--bootstrap-servers": ("bootstrap_servers", str, "Kafka bootstrap servers (host:port,...)"),
    "--topic": ("topic", str, "main topic (retry tiers and DLT derive from it)"),
    "--group": ("group", str, "consumer group id"),
    "--sink-url": ("sink_url", str, "sqlite:///path | postgresql://... | sim://... | memory://"),
    "--metrics-port": ("metrics_port", int, "port of /metrics (0 disables)"),
    "--partitions": ("partitions", int, "partitions of topics created"),
    "--log-level": ("log_level", str, "debug, info, warning or error"),
}


class UsageError(Exception):
    """A problem with the command line or settings: print it, exit 2."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (else from RECON_* environment variables)")
    for flag, (dest, kind, help_text) in _COMMON_FLAGS.items():
        group.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    values = {
        dest: getattr(args, dest)
        for dest, _, _ in _COMMON_FLAGS.values()
        if getattr(args, dest, None) is not None
    }
    values.update(overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise UsageError(f"invalid settings: {problems}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- commands --------------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds to the finally below, which stops the child

    broker = EmbeddedBroker(port=args.port, host=args.host)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        broker.start()
        print(f"embedded broker ready on {broker.bootstrap_servers} (memory only; Ctrl-C stops)")
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.topics import ensure_topics

    settings = load_settings(args)
    for status in ensure_topics(settings):
        state = "created" if status.created else "exists"
        print(f"{status.name}\t{status.partitions} partitions\t{state}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker
    from streams.topics import ensure_topics

    settings = load_settings(args)
    _setup_logging(settings.log_level)
    if not args.no_create_topics:
        ensure_topics(settings)
    run_worker(settings)
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from processors.codec import AvroCodec
    from processors.synthetic import SyntheticSpec, generate
    from streams.publish import make_producer, parse_json_lines, publish, routed
    from streams.topics import TopicNames

    settings = load_settings(args)
    limits = settings.event_limits
    codec = AvroCodec(limits)
    # Each event to its priority lane's topic, unless --no-lanes (all to --topic).
    lanes = None if args.no_lanes else TopicNames.from_settings(settings)
    if args.synthetic is not None:
        spec = SyntheticSpec(
            count=args.synthetic,
            entities=args.entities,
            duplicate_rate=args.duplicate_rate,
            reorder_rate=args.reorder_rate,
            poison_rate=args.poison_rate,
            seed=args.seed,
        )
        records: Any = (
            (r.key.encode(), r.value)
            if lanes is None
            else routed(lanes, r.key.encode(), r.value, r.event.priority if r.event else None)
            for r in generate(spec, codec)
        )
        report = publish(make_producer(settings), settings.topic, records, rate_per_s=args.rate)
    else:
        with contextlib.ExitStack() as stack:
            if args.file in (None, "-"):
                source: Any = sys.stdin
            else:
                try:
                    source = stack.enter_context(Path(args.file).open(encoding="utf-8"))
                except OSError as exc:
                    raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
            report = publish(
                make_producer(settings),
                settings.topic,
                parse_json_lines(source, codec, limits, lanes),
                rate_per_s=args.rate,
            )
    for rejected in report.rejected:
        print(f"line {rejected.line_no}: rejected: {rejected.reason}", file=sys.stderr)
    for error in report.errors:
        print(f"delivery failed: {error}", file=sys.stderr)
    print(
        f"published {report.published} to {settings.topic}; rejected {len(report.rejected)}; "
        f"failed {report.failed}"
    )
    if lanes is not None and set(report.published_by_topic) - {settings.topic}:
        by_lane = ", ".join(f"{t}: {n}" for t, n in sorted(report.published_by_topic.items()))
        print(f"by lane topic: {by_lane}")
    return 1 if report.rejected or report.failed else 0


def cmd_sim(args: argparse.Namespace) -> int:
    from processors.sinks.sim import SimConditions, read_conditions, write_conditions

    path = Path(args.control)
    current = read_conditions(path) if path.exists() else SimConditions()
    changes = {
        name: getattr(args, name)
        for name in ("latency_ms", "jitter_ms", "per_record_us", "error_rate", "outage")
        if getattr(args, name) is not None
    }
    updated = current.__class__(**{**_as_dict(current), **changes})
    if changes:
        write_conditions(path, updated)
    print(f"{path}: {_as_dict(updated)}")
    return 0


def _as_dict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def cmd_dlt(args: argparse.Namespace) -> int:
    from streams.failures.dlt import list_command

    return list_command(args, load_settings(args))


def cmd_lag(args: argparse.Namespace) -> int:
    from streams.ops_cli import lag_command

    return lag_command(args, load_settings(args))


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.ops_cli import replay_command

    return replay_command(args, load_settings(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import DemoOptions, run_demo

    settings = load_settings(args)
    options = DemoOptions(
        events=args.events,
        duration_s=args.duration,
        workers=args.workers,
        report_dir=Path(args.report_dir),
        seed=args.seed,
    )
    return run_demo(settings, options)


def cmd_top(args: argparse.Namespace) -> int:
    from streams.ops.top import DEFAULT_METRICS_URL, check_url, run_top

    urls = args.metrics_url or [DEFAULT_METRICS_URL]
    if not 0 < args.interval <= 3600:
        raise UsageError(f"--interval {args.interval}: not between 0 and 3600 seconds")
    try:
        for url in urls:
            check_url(url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run_top(urls, interval_s=args.interval, iterations=args.iterations)


# --- parser ----------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_dlt_filters(parser: argparse.ArgumentParser) -> None:
    from streams.failures.dlt import add_filter_arguments

    add_filter_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon", description="recon-streams: idempotent reconciliation on Kafka"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        commands[name] = func
        return p

    p = add("broker", cmd_broker, "run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")

    p = add("topics", cmd_topics, "create or verify the main, retry and dead-letter topics")
    _add_common(p)

    p = add("worker", cmd_worker, "run one processor instance; run more to scale out")
    p.add_argument("--no-create-topics", action="store_true", help="do not create topics")
    _add_common(p)

    p = add("produce", cmd_produce, "publish events: JSON lines from --file/stdin, or synthetic")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--file", help="JSON lines file ('-' or absent: stdin)")
    source.add_argument("--synthetic", type=_positive_int, metavar="N", help="N synthetic events")
    p.add_argument("--entities", type=_positive_int, default=1000)
    p.add_argument("--duplicate-rate", type=_fraction, default=0.05)
    p.add_argument("--reorder-rate", type=_fraction, default=0.05)
    p.add_argument("--poison-rate", type=_fraction, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    p.add_argument(
        "--no-lanes",
        action="store_true",
        help="publish every event to --topic instead of its priority lane's topic",
    )
    _add_common(p)

    p = add("sim", cmd_sim, "show or change the simulated downstream's conditions while it runs")
    p.add_argument("--control", required=True, help="control file named in the sim:// URL")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--jitter-ms", type=float)
    p.add_argument("--per-record-us", type=float)
    p.add_argument("--error-rate", type=_fraction)
    p.add_argument("--outage", type=lambda s: s.lower() in ("1", "true", "yes", "on"))

    p = add(
        "dlt", cmd_dlt, "list dead letters with their reasons (redrive: recon replay --from-dlt)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    _add_dlt_filters(p)
    _add_common(p)

    from streams.ops_cli import add_lag_arguments, add_replay_arguments

    p = add("lag", cmd_lag, "lag per partition, in messages and seconds, with a status")
    add_lag_arguments(p)
    _add_common(p)

    p = add(
        "replay",
        cmd_replay,
        "reset a group's committed offsets on --topic (or redrive the DLT with --from-dlt)",
    )
    add_replay_arguments(p)
    _add_common(p)

    p = add("top", cmd_top, "live view of running workers from their /metrics")
    p.add_argument(
        "--metrics-url",
        action="append",
        metavar="URL",
        help="a worker's /metrics (repeatable; default http://127.0.0.1:9308/metrics)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=_positive_int, default=None, help="stop after N refreshes")

    p = add("demo", cmd_demo, "the main job on embedded defaults, with live progress")
    p.add_argument("--events", type=_positive_int, default=20_000)
    p.add_argument("--duration", type=float, default=20.0, help="seconds to spread the load")
    p.add_argument("--workers", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--report-dir", default="reports")
    _add_common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"recon {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
