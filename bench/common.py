"""What the bench and its contender processes share: the work, the result file, memory probes.

Every contender does the same work per record: Avro-decode the value with
:class:`processors.codec.AvroCodec` (a record that does not decode is counted, not fatal) and
keep each entity's highest version in a dict. It stops once it has seen ``expected`` records
and writes a :class:`ContenderResult` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from processors.codec import AvroCodec
from processors.errors import ReconError
from processors.event import EventLimits

# Short group timings, as the worker's defaults (streams/settings.py): a first join on the
# embedded broker then takes ~3 s instead of ~30 s (BROKER.md, gap 4).
SESSION_TIMEOUT_MS = 6000
MAX_POLL_INTERVAL_MS = 10000


@dataclass
class ContenderResult:
    count: int = 0
    decode_errors: int = 0
    entities: int = 0
    first_ts: float = 0.0  # time.time() when the first record was handed to our code
    last_ts: float = 0.0  # time.time() when the expected-th record was processed
    peak_rss_bytes: int = 0  # VmHWM of the contender process at the end
    cpu_seconds: float = 0.0  # process CPU time (all threads) between first and last record
    # Latency mode (raw loop only): consume time - record timestamp, after the warm-up records
    latency_ms: list[float] | None = None

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        tmp.replace(path)  # atomic: the parent never reads half a file

    @classmethod
    def read(cls, path: Path) -> ContenderResult:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class MaxVersion:
    """The per-record work: decode, then keep the highest version per entity."""

    def __init__(self, expected: int) -> None:
        self.codec = AvroCodec(EventLimits())
        self.versions: dict[str, int] = {}
        self.expected = expected
        self.result = ContenderResult()
        self._cpu_first = 0.0

    def feed(self, value: bytes | None) -> bool:
        """Process one record value; True once ``expected`` records have been seen."""
        result = self.result
        if result.count >= self.expected:  # done; a framework may still hand us buffered records
            return True
        if result.count == 0:
            result.first_ts = time.time()
            self._cpu_first = time.process_time()
        try:
            event = self.codec.decode(value or b"")
        except ReconError:
            result.decode_errors += 1
        else:
            versions = self.versions
            if event.version > versions.get(event.entity_id, 0):
                versions[event.entity_id] = event.version
        result.count += 1
        if result.count >= self.expected:
            result.last_ts = time.time()
            result.cpu_seconds = time.process_time() - self._cpu_first
            return True
        return False

    def finish(self, out: Path) -> None:
        self.result.entities = len(self.versions)
        self.result.peak_rss_bytes = vm_hwm_bytes("self")
        self.result.write(out)


def vm_hwm_bytes(pid: int | str) -> int:
    """Peak resident set size of a live process (Linux ``VmHWM``); 0 if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def contender_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--latency-skip",
        type=int,
        default=-1,
        help="latency mode: record (now - record timestamp) for every record after this many "
        "warm-up records, and touch OUT.ready once the warm-up records are consumed",
    )
    return parser.parse_args()
