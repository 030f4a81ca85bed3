"""Topic names and their creation.

main: ``<topic>``; retry tiers: ``<topic>.retry.<n>`` (n = 1..len(retry_delays));
dead letters: ``<topic>.dlt``. Retry topics get the main topic's partition count so a retry
copy can keep its original partition (and with it, per-key locality).

Priority lanes (streams/backpressure/lanes.py): ``<topic>.critical`` and ``<topic>.bulk``
beside ``<topic>`` (the normal lane), with the main topic's partition count; the retry tiers
and the DLT are shared by all lanes (a copy names its original topic, hence its lane, in a header).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.backpressure.lanes import Lane
from streams.kafka.client_config import confluent_config
from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicNames:
    main: str
    retries: tuple[str, ...]
    dlt: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls(settings.topic, tuple(settings.retry_topics), settings.dlt_topic)

    @property
    def critical(self) -> str:
        return f"{self.main}.critical"

    @property
    def bulk(self) -> str:
        return f"{self.main}.bulk"

    @property
    def lanes(self) -> dict[Lane, str]:
        """Lane -> its topic."""
        return {Lane.CRITICAL: self.critical, Lane.NORMAL: self.main, Lane.BULK: self.bulk}

    def lane_topic(self, lane: Lane) -> str:
        return self.lanes[lane]

    def lane_of(self, topic: str) -> Lane | None:
        """The lane whose topic is ``topic`` (None for retry tiers, the DLT and others)."""
        if topic == self.main:
            return Lane.NORMAL
        if topic == self.critical:
            return Lane.CRITICAL
        if topic == self.bulk:
            return Lane.BULK
        return None

    @property
    def all(self) -> tuple[str, ...]:
        return (self.main, self.critical, self.bulk, *self.retries, self.dlt)

    def retry_tier(self, topic: str) -> int:
        """0 for a lane topic (main, critical, bulk), n for ``<main>.retry.<n>``; ValueError
        otherwise."""
        if self.lane_of(topic) is not None:
            return 0
        try:
            return self.retries.index(topic) + 1
        except ValueError:
            raise ValueError(f"{topic!r} is neither the main topic nor a retry tier") from None


@dataclass(frozen=True, slots=True)
class TopicStatus:
    name: str
    partitions: int
    created: bool


class TopicMismatch(RuntimeError):
    """A topic exists with a partition count other than the one required."""


def ensure_topics(settings: Settings, timeout_s: float = 15.0) -> list[TopicStatus]:
    """Create any missing topic; verify that existing ones have the expected partitions.

    The DLT gets the same partition count (redrive keeps partition-by-key simple).
    """
    names = TopicNames.from_settings(settings)
    admin = AdminClient(confluent_config(settings))
    existing = admin.list_topics(timeout=timeout_s).topics
    statuses: list[TopicStatus] = []
    to_create: list[NewTopic] = []
    main_meta = existing.get(names.main)
    partitions = len(main_meta.partitions) if main_meta else settings.partitions
    for name in names.all:
        meta = existing.get(name)
        if meta is None:
            to_create.append(NewTopic(name, partitions, settings.replication_factor))
            statuses.append(TopicStatus(name, partitions, created=True))
            continue
        if len(meta.partitions) != partitions:
            raise TopicMismatch(
                f"topic {name} has {len(meta.partitions)} partitions, expected {partitions} "
                f"(the main topic's count); recreate it or align the counts"
            )
        statuses.append(TopicStatus(name, partitions, created=False))
    if to_create:
        for name, future in admin.create_topics(to_create, request_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                # Another instance created it between our list and create: fine.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    return statuses
