"""The topic plan: every topic once, with the configured partitions and retention."""

from __future__ import annotations

import pytest

from messaging.settings import Settings
from messaging.topic_admin import plan_topics
from messaging.topics import EXTERNAL, INTERNAL, all_topics


def test_plan_covers_every_topic_once() -> None:
    names = [s.name for s in plan_topics(Settings())]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(all_topics())


def test_plan_takes_partitions_replication_and_retention_from_settings() -> None:
    settings = Settings(checkout_partitions=24, checkout_replication_factor=3,
                        checkout_min_insync_replicas=2, checkout_retention_ms=1000,
                        checkout_dlq_retention_ms=-1)
    plan = {s.name: s for s in plan_topics(settings)}
    for name in EXTERNAL + INTERNAL:
        spec = plan[name]
        assert (spec.partitions, spec.replication_factor) == (24, 3)
        assert spec.config == {"retention.ms": "1000", "cleanup.policy": "delete",
                               "min.insync.replicas": "2"}
    dlq = plan["checkout.requested.dlq"]
    assert dlq.kind == "dead-letter" and dlq.config["retention.ms"] == "-1"
    assert {plan[t].kind for t in EXTERNAL} == {"external"}
    assert {plan[t].kind for t in INTERNAL} == {"internal"}


def test_plan_leaves_min_isr_to_the_broker_when_unset() -> None:
    assert all("min.insync.replicas" not in s.config for s in plan_topics(Settings()))


def test_plan_refuses_a_min_isr_no_write_could_meet() -> None:
    with pytest.raises(ValueError, match="no write could ever succeed"):
        plan_topics(Settings(checkout_replication_factor=2, checkout_min_insync_replicas=3))
