"""`checkout-saga topics create` against a real Kafka-protocol broker of its own
(a fresh tansu, so "created" can be told from "already there")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from helpers import cli_json

from checkout_saga.embedded.stack import EmbeddedStack
from messaging.topics import all_topics


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A fresh broker per test (tansu starts in well under a second)."""
    stack = EmbeddedStack(tmp_path / "broker")
    # Only Kafka is started: the command never touches PostgreSQL or Redis.
    found = stack.start(kafka=None, database="postgresql://unused@127.0.0.1:1/unused",
                        redis="redis://127.0.0.1:1/0")
    try:
        yield found.kafka_bootstrap
    finally:
        stack.stop()


def topics_env(bootstrap: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, CHECKOUT_DATA_DIR=str(tmp_path),
               CHECKOUT_PARTITIONS="3", CHECKOUT_REPLICATION_FACTOR="1",
               CHECKOUT_MIN_INSYNC_REPLICAS="1", CHECKOUT_RETENTION_MS="3600000",
               CHECKOUT_DLQ_RETENTION_MS="86400000")
    env.update(extra)
    return env


def test_creates_every_topic_once_with_its_partitions_and_retention(
    broker: str, tmp_path: Path
) -> None:
    env = topics_env(broker, tmp_path)
    first = cli_json(env, "topics", "create")
    assert sorted(first["created"]) == sorted(all_topics())
    assert first["existing"] == [] and first["differing"] == []

    second = cli_json(env, "topics", "create")
    assert second["created"] == []
    assert sorted(second["existing"]) == sorted(all_topics())

    admin = AdminClient({"bootstrap.servers": broker})
    metadata = admin.list_topics(timeout=10).topics
    assert {t: len(metadata[t].partitions) for t in all_topics()} == {t: 3 for t in all_topics()}
    resources = [ConfigResource("topic", t) for t in ("checkout.requested", "saga.replies.dlq")]
    configs = {r.name: f.result(10) for r, f in admin.describe_configs(resources).items()}
    assert configs["checkout.requested"]["retention.ms"].value == "3600000"
    assert configs["saga.replies.dlq"]["retention.ms"].value == "86400000"
    assert configs["checkout.requested"]["min.insync.replicas"].value == "1"


def test_an_existing_topic_with_other_partitions_is_reported_and_left_alone(
    broker: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic("checkout.results", 2, 1)])["checkout.results"].result(10)

    report = cli_json(topics_env(broker, tmp_path, CHECKOUT_PARTITIONS="5"), "topics", "create")
    assert report["differing"] == [{"topic": "checkout.results", "partitions": 2, "planned": 5}]
    assert "checkout.results" in report["existing"]
    assert len(report["created"]) == len(all_topics()) - 1
    after = admin.list_topics(timeout=10).topics["checkout.results"].partitions
    assert len(after) == 2


def test_concurrent_runs_both_succeed_and_share_the_work(broker: str, tmp_path: Path) -> None:
    env = topics_env(broker, tmp_path)
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    procs = [subprocess.Popen([exe, "topics", "create", "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(out) for out, _ in outs]
    created = [t for r in reports for t in r["created"]]
    # Each topic is created by exactly one of them; the other sees it there.
    assert sorted(created) == sorted(all_topics())
    assert all(sorted(r["created"] + r["existing"]) == sorted(all_topics()) for r in reports)


def test_refuses_a_min_isr_above_the_replication_factor(tmp_path: Path) -> None:
    # Refused before any broker is asked: the address is never dialled.
    env = topics_env("127.0.0.1:1", tmp_path, CHECKOUT_REPLICATION_FACTOR="1",
                     CHECKOUT_MIN_INSYNC_REPLICAS="2")
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    proc = subprocess.run([exe, "topics", "create"], env=env, capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 2
    assert "CHECKOUT_MIN_INSYNC_REPLICAS=2" in proc.stderr
