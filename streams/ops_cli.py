"""``recon lag`` and ``recon replay``: argument definitions and terminal rendering.

The measurements and resets live in ``streams/kafka/lag.py`` and
``streams/kafka/offset_reset.py``; this module only parses, prints and picks exit codes
(0 done, 1 failed, 2 refused or invalid).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from confluent_kafka import KafkaException
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.kafka.lag import (
    GroupLag,
    LagHistory,
    LagUnavailable,
    Status,
    StatusPolicy,
    lag_document,
    measure_lag,
)
from streams.kafka.offset_reset import (
    GroupIsLive,
    InvalidTarget,
    OffsetChange,
    ResetTarget,
    ToEarliest,
    ToOffsets,
    ToTimestamp,
    apply_reset,
    check_idle,
    parse_offset_specs,
    parse_timestamp_ms,
    plan_reset,
)
from streams.settings import Settings

_STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.ERR: "red", Status.STOP: "red"}


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _console(out: TextIO) -> Console:
    # Piped output (logs, docs, tests) gets room for long topic names instead of 80 columns.
    return Console(file=out, highlight=False, width=None if out.isatty() else 160)


# --- recon lag -------------------------------------------------------------------------------


def add_lag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="machine-readable (JSON lines)")
    parser.add_argument(
        "--interval", type=_positive_float, default=5.0, help="seconds between samples"
    )
    parser.add_argument(
        "--samples",
        type=_count,
        default=1,
        help="without --watch: samples to take --interval apart before printing (trends need 3)",
    )
    parser.add_argument(
        "--iterations", type=_count, default=0, help="with --watch: stop after N refreshes"
    )
    parser.add_argument(
        "--window", type=_count, default=10, help="samples judged for stall and growth"
    )
    parser.add_argument(
        "--stop-after",
        type=_positive_float,
        default=120.0,
        help="seconds without a commit (while lagging) that make a partition STOP",
    )


def lag_command(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    history = LagHistory(StatusPolicy(window=max(1, args.window), stop_after_s=args.stop_after))
    console = _console(out)

    def sample() -> GroupLag:
        measurement = measure_lag(settings)
        history.add(measurement)
        return measurement

    try:
        if not args.watch:
            measurement = sample()
            for _ in range(max(0, args.samples - 1)):
                time.sleep(args.interval)
                measurement = sample()
            if args.json:
                print(json.dumps(lag_document(measurement, history)), file=out)
            else:
                console.print(render_lag(measurement, history))
            return 0
        if args.json:
            _watch_json(sample, history, args, out)
        else:
            with Live(console=console, auto_refresh=False) as live:
                _watch(sample, args, lambda m: live.update(render_lag(m, history), refresh=True))
    except LagUnavailable as exc:
        print(f"recon lag: {exc}", file=sys.stderr)
        return 1
    return 0


def _watch(
    sample: Callable[[], GroupLag],
    args: argparse.Namespace,
    show: Callable[[GroupLag], None],
) -> None:
    refreshes = 0
    while not args.iterations or refreshes < args.iterations:
        started = time.monotonic()
        show(sample())
        refreshes += 1
        if args.iterations and refreshes >= args.iterations:
            break
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


def _watch_json(
    sample: Callable[[], GroupLag], history: LagHistory, args: argparse.Namespace, out: TextIO
) -> None:
    def show(measurement: GroupLag) -> None:
        print(json.dumps(lag_document(measurement, history)), file=out, flush=True)

    _watch(sample, args, show)


def render_lag(measurement: GroupLag, history: LagHistory) -> Group:
    worst = history.worst(measurement)
    at = datetime.fromtimestamp(measurement.at_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = Text.assemble(
        f"group {measurement.group}  state {measurement.state}  "
        f"members {'?' if measurement.members is None else measurement.members}  "
        f"lag {measurement.total()}  status ",
        (worst.name, _STATUS_STYLE[worst]),
        f"  ({at})",
    )
    table = Table(box=None, pad_edge=False)
    for name in ("topic", "partition", "committed", "high watermark", "lag", "lag s"):
        table.add_column(name, justify="left" if name == "topic" else "right", no_wrap=True)
    table.add_column("status")
    table.add_column("reason", overflow="fold")
    for p in measurement.partitions:
        evaluation = history.evaluate(p.topic, p.partition)
        table.add_row(
            p.topic,
            str(p.partition),
            "-" if p.committed is None else str(p.committed),
            str(p.high_watermark),
            str(p.lag_messages),
            f"{p.lag_seconds:.1f}",
            Text(evaluation.status.name, style=_STATUS_STYLE[evaluation.status]),
            evaluation.reason,
        )
    return Group(title, table)


# --- recon replay ----------------------------------------------------------------------------


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--to-offset",
        nargs="+",
        metavar="P:O",
        help="set partition P to offset O (partitions not named are left alone)",
    )
    target.add_argument(
        "--to-timestamp",
        metavar="TIME",
        help="first record at or after TIME (ISO-8601, e.g. 2026-11-22T10:00:00Z, or epoch ms)",
    )
    target.add_argument("--to-earliest", action="store_true", help="the start of every partition")
    target.add_argument(
        "--from-dlt", action="store_true", help="redrive dead letters instead (see filters)"
    )
    parser.add_argument("--dry-run", action="store_true", help="show the change, change nothing")
    parser.add_argument(
        "--force", action="store_true", help="reset even while the group has live members"
    )
    dlt = _dlt_module()
    if dlt is not None and hasattr(dlt, "add_filter_arguments"):
        dlt.add_filter_arguments(parser)


def _dlt_module() -> Any:
    """``streams.failures.dlt`` (DLT listing and redrive) if this build has it, else None."""
    if importlib.util.find_spec("streams.failures.dlt") is None:
        return None
    return importlib.import_module("streams.failures.dlt")


def replay_command(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.from_dlt:
        dlt = _dlt_module()
        redrive = getattr(dlt, "redrive_command", None)
        if redrive is None:
            print("recon replay: --from-dlt is not available in this build", file=sys.stderr)
            return 2
        code: int = redrive(args, settings)
        return code
    group, topic = settings.group, settings.topic
    console = _console(out)
    try:
        target = _target(args)
        if not args.force:
            try:
                check_idle(settings, group)
            except GroupIsLive as exc:
                if not args.dry_run:
                    print(f"recon replay: refused: {exc}", file=sys.stderr)
                    return 2
                console.print(f"note: {exc}; a real run would be refused")
        changes = plan_reset(settings, group, topic, target)
    except InvalidTarget as exc:
        print(f"recon replay: {exc}", file=sys.stderr)
        return 2
    console.print(render_changes(group, changes, None))
    if args.dry_run:
        console.print("dry run: nothing changed")
        return 0
    try:
        now = apply_reset(settings, group, changes)
    except KafkaException as exc:
        # e.g. UNKNOWN_MEMBER_ID: the broker still counts members in the group.
        print(f"recon replay: the broker refused the reset: {exc}", file=sys.stderr)
        return 1
    console.print(render_changes(group, changes, now))
    wrong = [c for c in changes if now.get((c.topic, c.partition)) != c.after]
    if wrong:
        print(f"recon replay: {len(wrong)} partition(s) did not take the reset", file=sys.stderr)
        return 1
    replayed = sum(max(0, c.delta) for c in changes)
    skipped = sum(max(0, -c.delta) for c in changes)
    console.print(f"reset {len(changes)} partition(s): {replayed} to replay, {skipped} skipped")
    return 0


def _target(args: argparse.Namespace) -> ResetTarget:
    if args.to_offset:
        return ToOffsets(parse_offset_specs(args.to_offset))
    if args.to_timestamp:
        return ToTimestamp(parse_timestamp_ms(args.to_timestamp))
    return ToEarliest()


def render_changes(
    group: str, changes: list[OffsetChange], now: dict[tuple[str, int], int | None] | None
) -> Table:
    title = f"group {group}: " + ("committed offsets now" if now is not None else "planned reset")
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for name in ("topic", "partition", "range", "before", "after", "replay(+)/skip(-)"):
        table.add_column(name, justify="left" if name == "topic" else "right")
    if now is not None:
        table.add_column("read back", justify="right")
    for c in changes:
        row = [
            c.topic,
            str(c.partition),
            f"[{c.low}, {c.high}]",
            "-" if c.before is None else str(c.before),
            str(c.after),
            f"{c.delta:+d}",
        ]
        if now is not None:
            value = now.get((c.topic, c.partition))
            row.append("-" if value is None else str(value))
        table.add_row(*row)
    return table
