"""Consumer groups seen from the outside: members, committed offsets, partition counts.

All through confluent-kafka's AdminClient, so it works on any Kafka-compatible broker and
carries the project's one security model (``confluent_config``).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.client_config import confluent_config
from streams.settings import Settings

ACTIVE_STATES = frozenset({"STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE"})


@dataclass(frozen=True, slots=True)
class GroupMember:
    member_id: str
    client_id: str
    host: str
    assignment: tuple[tuple[str, int], ...]  # (topic, partition) pairs


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group: str
    state: str  # e.g. STABLE, EMPTY, PREPARING_REBALANCE, DEAD, UNKNOWN
    members: tuple[GroupMember, ...]

    @property
    def live(self) -> bool:
        """True while any consumer may be a member (it may commit and overwrite a reset).

        Members, or else the state: the embedded broker lists no members even for a stable
        group, so a group in an active state counts as live. (It also keeps a group whose
        only member was killed STABLE until the next rebalance: there, an operator who
        knows the workers are gone passes ``--force``.)
        """
        return bool(self.members) or self.state in ACTIVE_STATES

    @property
    def member_count(self) -> int | None:
        """Members listed; None when the broker lists none for an active group (unknown)."""
        if not self.members and self.state in ACTIVE_STATES:
            return None
        return len(self.members)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(confluent_config(settings, log_level=3))


def describe_group(settings: Settings, group: str, timeout_s: float = 10.0) -> GroupInfo:
    """The group's state and members (a group nobody ever joined has none)."""
    admin = admin_client(settings)
    futures = admin.describe_consumer_groups([group], request_timeout=timeout_s)
    description = futures[group].result(timeout=timeout_s)
    members = tuple(
        GroupMember(
            member_id=str(m.member_id),
            client_id=str(m.client_id),
            host=str(m.host),
            assignment=tuple(
                sorted(
                    (tp.topic, tp.partition)
                    for tp in (m.assignment.topic_partitions if m.assignment else [])
                )
            ),
        )
        for m in description.members or []
    )
    state = getattr(description.state, "name", str(description.state))
    return GroupInfo(group=group, state=state, members=members)


def group_offsets(
    settings: Settings, group: str, timeout_s: float = 10.0
) -> dict[str, dict[int, int]]:
    """topic -> partition -> committed offset, for every partition the group committed."""
    admin = admin_client(settings)
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
    )
    result = futures[group].result(timeout=timeout_s)
    offsets: dict[str, dict[int, int]] = {}
    for tp in result.topic_partitions or []:
        if tp.error is None and tp.offset >= 0:
            offsets.setdefault(tp.topic, {})[tp.partition] = tp.offset
    return offsets


def topic_partitions(
    settings: Settings, topics: list[str] | tuple[str, ...], timeout_s: float = 10.0
) -> dict[str, list[int]]:
    """topic -> sorted partition ids; topics that do not exist are absent."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout_s).topics
    found: dict[str, list[int]] = {}
    for topic in topics:
        meta = metadata.get(topic)
        if meta is not None and meta.error is None:
            found[topic] = sorted(meta.partitions)
    return found


def alter_offsets(
    settings: Settings, group: str, offsets: dict[tuple[str, int], int], timeout_s: float = 10.0
) -> None:
    """Set the group's committed offsets; raises ``KafkaException`` if the broker refuses."""
    if not offsets:
        return
    admin = admin_client(settings)
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p, o) for (topic, p), o in sorted(offsets.items())]
    )
    futures = admin.alter_consumer_group_offsets([request], request_timeout=timeout_s)
    result = futures[group].result(timeout=timeout_s)
    errors = [tp for tp in result.topic_partitions or [] if tp.error is not None]
    if errors:
        raise KafkaException(errors[0].error)
