"""The expected result of a published stream, computed the simplest possible way.

Feed it every record in publication order (records of one key keep their order, since one key
maps to one partition); it decodes each with the same codec as the processor and folds the
apply rules sequentially. Tests then compare the sink row by row with :attr:`rows` and the
dead-letter count with :attr:`dead_lettered`.
"""

from __future__ import annotations

from collections import Counter

from processors.apply_rules import Outcome, StoredRow, apply
from processors.codec import AvroCodec
from processors.errors import DecodeError, InvalidEvent
from processors.synthetic import SyntheticRecord

UNDECODABLE = "undecodable"
INVALID = "invalid"


class ReferenceModel:
    """Sequential fold of a record stream; counts every outcome by name."""

    def __init__(self, codec: AvroCodec | None = None, now_ms: int = 0) -> None:
        self.codec = codec or AvroCodec()
        self.now_ms = now_ms
        self.counts: Counter[str] = Counter()
        self._rows: dict[str, StoredRow] = {}

    def observe(self, key: str | None, value: bytes | None) -> str:
        """Apply one published record; returns its outcome name (an :class:`Outcome` value,
        ``undecodable`` or ``invalid``). ``key`` only documents the partitioning: the entity is
        taken from the decoded event, as the processor does."""
        try:
            event = self.codec.decode(value)
        except DecodeError:
            self.counts[UNDECODABLE] += 1
            return UNDECODABLE
        except InvalidEvent:
            self.counts[INVALID] += 1
            return INVALID
        outcome, row = apply(self._rows.get(event.entity_id), event, self.now_ms)
        if row is not None:
            self._rows[event.entity_id] = row
        self.counts[outcome.value] += 1
        return outcome.value

    def observe_record(self, record: SyntheticRecord) -> str:
        return self.observe(record.key, record.value)

    @property
    def rows(self) -> dict[str, StoredRow]:
        return dict(self._rows)

    @property
    def applied(self) -> int:
        return self.counts[Outcome.APPLIED.value]

    @property
    def duplicate(self) -> int:
        return self.counts[Outcome.DUPLICATE.value]

    @property
    def stale(self) -> int:
        return self.counts[Outcome.STALE.value]

    @property
    def conflict(self) -> int:
        return self.counts[Outcome.CONFLICT.value]

    @property
    def undecodable(self) -> int:
        return self.counts[UNDECODABLE]

    @property
    def invalid(self) -> int:
        return self.counts[INVALID]

    @property
    def dead_lettered(self) -> int:
        """Records the processor must send to the DLT: conflict + undecodable + invalid."""
        return self.conflict + self.undecodable + self.invalid

    @property
    def total(self) -> int:
        return sum(self.counts.values())
