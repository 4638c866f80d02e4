"""Broker faults under load: a node of a three-node Apache Kafka cluster SIGKILLed and started
again, and the single embedded broker restarted, each in mid-storm.

Each runs `checkout-saga chaos`'s storm on a stack of its own (see test_chaos.py). In both
cases every saga must end with an outcome its kind allows, nothing may be lost or doubled
(verify: one order, one authorization, one result per session, every OrderConfirmed
published), and the goodput is reported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from checkout_saga.embedded.kafka_broker import find_java
from checkout_saga.ops.chaos import ChaosPlan, ChaosReport, run_chaos

URL_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")
# tansu keeps nothing over a restart: these faults are Apache Kafka's to survive.
pytestmark = pytest.mark.skipif(
    find_java(os.environ) is None or os.environ.get("CHECKOUT_EMBEDDED_BROKER") == "tansu",
    reason="broker faults need Apache Kafka (Java 17+)")


def storm(workdir: Path, plan: ChaosPlan) -> ChaosReport:
    env = {**{k: v for k, v in os.environ.items() if k not in URL_VARS},
           "CHECKOUT_PARTITIONS": "2", "CHECKOUT_EMBEDDED_BROKER": "kafka"}
    report = run_chaos(workdir, plan, env)
    figures = {k: v for k, v in report.as_json().items() if k not in ("verify", "wrong")}
    sys.stderr.write(f"\nchaos figures: {json.dumps(figures)}\n")
    failing = [c for c in report.verify["checks"] if c["status"] not in ("ok", "skipped")]
    assert report.missing == 0, f"no result for {report.missing_sessions}"
    assert report.wrong == []
    assert failing == [] and report.verify["ok"], json.dumps(failing, indent=1)
    assert report.verify["figures"]["sagas_running"] == 0
    assert report.verify["figures"]["sagas_compensating"] == 0
    assert 0.0 < report.goodput <= 1.0
    return report


def test_a_cluster_node_killed_mid_storm_loses_and_doubles_nothing(own_workdir: Path) -> None:
    plan = ChaosPlan(checkouts=100, kills=0, per_role=1, postgres_restarts=0, redis_restarts=0,
                     duration=8.0, seed=5, result_timeout=120.0, brokers=3, broker_kills=1)
    report = storm(own_workdir, plan)
    assert report.broker_kills == 1
    assert any("SIGKILL Kafka node" in e for e in report.events)
    assert any("again" in e for e in report.events)


def test_the_single_broker_restarted_mid_storm_loses_and_doubles_nothing(own_workdir: Path) -> None:
    plan = ChaosPlan(checkouts=100, kills=0, per_role=1, postgres_restarts=0, redis_restarts=0,
                     duration=8.0, seed=6, result_timeout=120.0, brokers=1, broker_restarts=1)
    report = storm(own_workdir, plan)
    assert report.broker_restarts == 1
