"""Every topic the project uses, with the partitions, replication and retention
that configuration gives it, and the admin call that creates what is missing.

``plan_topics`` is pure (settings in, specs out) so the plan can be tested and
printed without a broker; ``create_topics`` is the thin adapter. Existing
topics are never altered: partitions can only grow, and growing them moves
keys to other partitions, which would split one checkout's events across two
partitions while sagas are in flight (see docs/operations.md, "Sizing").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from messaging.settings import Settings
from messaging.topics import CONSUMED, EXTERNAL, INTERNAL, dlq_topic

__all__ = ["CreateReport", "TopicSpec", "create_topics", "partition_counts", "plan_topics"]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    kind: str  # "external", "internal" or "dead-letter"
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass
class CreateReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # Existing topics whose partition count differs from the plan: reported,
    # never changed (see the module docstring).
    differing: list[dict[str, object]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"created": self.created, "existing": self.existing, "differing": self.differing}


def plan_topics(settings: Settings) -> tuple[TopicSpec, ...]:
    """The spec of every topic: external, internal, then the dead-letter topics."""
    replication = settings.checkout_replication_factor
    min_isr = settings.checkout_min_insync_replicas
    if min_isr is not None and min_isr > replication:
        # Kafka would accept the topic and then refuse every acks=all write.
        raise ValueError(
            f"CHECKOUT_MIN_INSYNC_REPLICAS={min_isr} is more than "
            f"CHECKOUT_REPLICATION_FACTOR={replication}: no write could ever succeed"
        )

    def config(retention_ms: int) -> dict[str, str]:
        out = {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}
        if min_isr is not None:
            out["min.insync.replicas"] = str(min_isr)
        return out

    def spec(name: str, kind: str, retention_ms: int) -> TopicSpec:
        return TopicSpec(name, kind, settings.checkout_partitions, replication, config(retention_ms))

    traffic = settings.checkout_retention_ms
    return (
        *(spec(t, "external", traffic) for t in EXTERNAL),
        *(spec(t, "internal", traffic) for t in INTERNAL),
        *(spec(dlq_topic(t), "dead-letter", settings.checkout_dlq_retention_ms) for t in CONSUMED),
    )


def create_topics(
    bootstrap: str, specs: tuple[TopicSpec, ...], timeout: float = 30.0
) -> CreateReport:
    """Create the topics of ``specs`` that do not exist; safe to run twice, or
    from several processes at once (a lost race counts as "existing")."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout).topics
    report = CreateReport()
    missing: list[TopicSpec] = []
    for spec in specs:
        if spec.name not in metadata:
            missing.append(spec)
            continue
        report.existing.append(spec.name)
        found = len(metadata[spec.name].partitions)
        if found != spec.partitions:
            report.differing.append(
                {"topic": spec.name, "partitions": found, "planned": spec.partitions}
            )
    if not missing:
        return report
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config))
         for s in missing],
        operation_timeout=timeout,
    )
    for spec in missing:
        try:
            futures[spec.name].result(timeout)
            report.created.append(spec.name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            report.existing.append(spec.name)
    return report


def partition_counts(bootstrap: str, names: list[str], timeout: float = 30.0) -> dict[str, int | None]:
    """How many partitions each topic has on the broker (None: it does not exist)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout).topics
    return {n: len(metadata[n].partitions) if n in metadata else None for n in names}
