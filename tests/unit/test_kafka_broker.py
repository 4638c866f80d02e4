"""The pure parts of the embedded Apache Kafka: its settings, where it lives, which Java runs it."""

from __future__ import annotations

from pathlib import Path

from checkout_saga.embedded.kafka_broker import (
    KAFKA_VERSION,
    find_java,
    kafka_home,
    new_cluster_id,
    server_properties,
)


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_cluster_ids_never_start_with_a_dash() -> None:
    # kafka-storage would read such an id as an option; one in 64 random ids starts with "-".
    ids = [new_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert {len(i) for i in ids} == {22} and len(set(ids)) == 2000


def test_one_node_is_broker_and_controller_on_loopback(tmp_path: Path) -> None:
    config = properties(server_properties(tmp_path / "data", 9092, 9093))
    assert config["process.roles"] == "broker,controller"
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert config["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    # A static quorum: the controller's port is in the config, not in the log.
    assert config["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert config["log.dirs"] == str(tmp_path / "data")


def test_internal_topics_fit_one_node_and_groups_start_at_once(tmp_path: Path) -> None:
    config = properties(server_properties(tmp_path, 1, 2))
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor"):
        assert config[key] == "1", key
    assert config["group.initial.rebalance.delay.ms"] == "0"
    # Low enough for every session timeout the project's settings and tests use (>= 1000 ms).
    assert int(config["group.min.session.timeout.ms"]) <= 1000


def test_the_cache_folder_is_per_version_and_can_be_moved(tmp_path: Path) -> None:
    assert kafka_home({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "checkout-saga" / f"kafka-{KAFKA_VERSION}")
    assert kafka_home({"CHECKOUT_KAFKA_HOME": str(tmp_path / "k"), "XDG_CACHE_HOME": "/x"}) == (
        tmp_path / "k")


def fake_jdk(root: Path, version: str) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    java = root / "bin" / "java"
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    return java


def test_java_17_or_newer_is_found_first_in_java_home_then_on_path(tmp_path: Path) -> None:
    old, new = fake_jdk(tmp_path / "jdk11", "11.0.2"), fake_jdk(tmp_path / "jdk21", "21.0.1")
    found = find_java({"JAVA_HOME": str(tmp_path / "jdk21"), "PATH": str(old.parent)})
    assert found is not None and (found.path, found.major) == (new, 21)
    found = find_java({"JAVA_HOME": str(tmp_path / "jdk11"), "PATH": str(new.parent)})
    assert found is not None and found.major == 21  # JAVA_HOME's is too old: PATH's is taken
    assert find_java({"JAVA_HOME": str(tmp_path / "jdk11"), "PATH": str(old.parent)}) is None
    assert find_java({"PATH": str(tmp_path)}) is None


def test_a_node_of_three_knows_every_voter_and_replicates_as_deploy_does(tmp_path: Path) -> None:
    voters = {1: 9101, 2: 9102, 3: 9103}
    config = properties(server_properties(tmp_path, 9002, 9102, node_id=2, voters=voters))
    assert config["node.id"] == "2"
    assert config["controller.quorum.voters"] == (
        "1@127.0.0.1:9101,2@127.0.0.1:9102,3@127.0.0.1:9103")
    assert config["listeners"] == "PLAINTEXT://127.0.0.1:9002,CONTROLLER://127.0.0.1:9102"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "default.replication.factor"):
        assert config[key] == "3", key
    assert config["min.insync.replicas"] == config["transaction.state.log.min.isr"] == "2"
    # A killed node is fenced within seconds, not the default 9.
    assert int(config["broker.session.timeout.ms"]) <= 3000
    alone = properties(server_properties(tmp_path, 1, 2))
    assert "broker.session.timeout.ms" not in alone and alone["min.insync.replicas"] == "1"
