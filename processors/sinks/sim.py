"""A simulated downstream: SQLite underneath, with latency, faults and outages on demand.

Conditions start from the ``sim://`` URL and can be changed while the job runs by writing a JSON
control file (``write_conditions``); the sink notices within ~100 ms. This is how the demo
stages a latency spike or an outage without touching the processor.

    sim://?db=/tmp/x.db&control=/tmp/ctl.json&latency_ms=5&jitter_ms=2&error_rate=0.01&seed=1

``log=/path/writes.jsonl`` appends one JSON line per row written (entity, version, event,
wall-clock ms), in write order: tests read from it the order in which an entity's events
reached the store.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from processors.apply_rules import StoredRow
from processors.errors import DownstreamTimeout, DownstreamUnavailable
from processors.sinks.sqlite import SqliteSink

CONTROL_CHECK_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class SimConditions:
    latency_ms: float = 0.0  # base latency of every write (and load)
    jitter_ms: float = 0.0  # mean of an exponential extra delay per write
    per_record_us: float = 0.0  # extra delay per row written
    error_rate: float = 0.0  # probability a write fails (before writing anything)
    outage: bool = False  # every write and load fails
    timeout_ms: float = 0.0  # if > 0: a write slower than this fails with DownstreamTimeout

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "per_record_us", "timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        rate = self.error_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"error_rate must be within [0, 1], got {rate!r}")
        if not isinstance(self.outage, bool):
            raise ValueError(f"outage must be true or false, got {self.outage!r}")


_FIELD_NAMES = frozenset(f.name for f in fields(SimConditions))


def conditions_from(values: Mapping[str, object], base: SimConditions) -> SimConditions:
    """``base`` with ``values`` applied; unknown keys or bad values -> ValueError."""
    unknown = sorted(set(values) - _FIELD_NAMES)
    if unknown:
        raise ValueError(f"unknown sim conditions {unknown}; known: {sorted(_FIELD_NAMES)}")
    return replace(base, **values)  # type: ignore[arg-type]  # checked in __post_init__


def read_conditions(path: str | Path, base: SimConditions | None = None) -> SimConditions:
    """Conditions from a JSON control file; keys it leaves out keep ``base``'s values."""
    values = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return conditions_from(values, base or SimConditions())


def write_conditions(path: str | Path, conditions: SimConditions) -> None:
    """Write the control file atomically: readers see the old or the new file, never half."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(conditions), out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _url_value(key: str, text: str) -> float | bool:
    if key == "outage":
        lowered = text.lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"outage={text!r} must be true or false")
        return lowered in ("1", "true", "yes")
    return float(text)


class SimulatedSink:
    """Wraps :class:`SqliteSink`; delays and failures follow the current :class:`SimConditions`."""

    def __init__(
        self,
        db: str | Path = ":memory:",
        conditions: SimConditions | None = None,
        control: str | Path | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        write_log: str | Path | None = None,
    ) -> None:
        self.inner = SqliteSink(db)
        self.write_log = Path(write_log) if write_log is not None else None
        self.initial = conditions or SimConditions()
        self.control = Path(control) if control is not None else None
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._monotonic = monotonic
        self._conditions = self.initial
        self._control_stamp: tuple[int, int] | None = None
        self._next_check = 0.0
        self.failures = 0  # writes/loads failed on purpose, for tests and summaries

    @classmethod
    def from_url(cls, url: str) -> SimulatedSink:
        """``sim://?db=...&control=...&<condition>=...&seed=N``."""
        parts = urlsplit(url)
        if parts.scheme != "sim" or parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"expected sim://?db=PATH&control=PATH&..., got {url!r}")
        db: str = ":memory:"
        control: str | None = None
        write_log: str | None = None
        seed: int | None = None
        values: dict[str, object] = {}
        for key, text in parse_qsl(parts.query, keep_blank_values=True):
            if key == "db":
                db = text
            elif key == "control":
                control = text
            elif key == "seed":
                seed = int(text)
            elif key == "log":
                write_log = text
            elif key in _FIELD_NAMES:
                values[key] = _url_value(key, text)
            else:
                raise ValueError(f"unknown sim:// parameter {key!r}")
        return cls(
            db,
            conditions_from(values, SimConditions()),
            control,
            random.Random(seed),
            write_log=write_log,
        )

    @property
    def conditions(self) -> SimConditions:
        """The conditions in force now (re-reading the control file if it changed)."""
        self._refresh()
        return self._conditions

    def _refresh(self) -> None:
        if self.control is None:
            return
        now = self._monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CONTROL_CHECK_INTERVAL_S
        try:
            st = self.control.stat()
        except FileNotFoundError:
            # No control file (or it was removed): back to the URL's conditions.
            self._control_stamp = None
            self._conditions = self.initial
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._control_stamp:
            return
        try:
            self._conditions = read_conditions(self.control, self.initial)
        except (OSError, ValueError, TypeError):
            return  # a half-edited or bad file: keep the current conditions, retry next check
        self._control_stamp = stamp

    def _outage_check(self, conditions: SimConditions, what: str) -> None:
        if conditions.outage:
            self.failures += 1
            raise DownstreamUnavailable(f"simulated outage: {what} refused")

    def load(self, entity_ids: Collection[str]) -> dict[str, StoredRow]:
        conditions = self.conditions
        self._outage_check(conditions, "load")
        if conditions.latency_ms:
            self._sleep(conditions.latency_ms / 1000)
        return self.inner.load(entity_ids)

    def write(self, rows: Sequence[StoredRow]) -> None:
        conditions = self.conditions
        self._outage_check(conditions, "write")
        delay_ms = conditions.latency_ms + conditions.per_record_us * len(rows) / 1000
        if conditions.jitter_ms:
            delay_ms += self._rng.expovariate(1 / conditions.jitter_ms)
        if conditions.timeout_ms and delay_ms > conditions.timeout_ms:
            self._sleep(conditions.timeout_ms / 1000)
            self.failures += 1
            raise DownstreamTimeout(
                f"simulated timeout: write would take {delay_ms:.0f} ms "
                f"> timeout_ms={conditions.timeout_ms:.0f}"
            )
        if delay_ms:
            self._sleep(delay_ms / 1000)
        # Drawn on every write (even at rate 0) so a seed gives the same fault sequence.
        if self._rng.random() < conditions.error_rate:
            self.failures += 1
            raise DownstreamUnavailable("simulated transient fault: write rejected")
        self.inner.write(rows)
        if self.write_log is not None:
            now_ms = int(time.time() * 1000)
            lines = (
                json.dumps([r.entity_id, r.version, r.last_event_id, now_ms]) + "\n" for r in rows
            )
            with self.write_log.open("a", encoding="utf-8") as out:
                out.writelines(lines)

    def snapshot(self) -> dict[str, StoredRow]:
        # Verification reads the real state, whatever the simulated conditions.
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()
