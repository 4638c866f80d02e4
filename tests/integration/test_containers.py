"""The end-to-end scenarios against Kafka, PostgreSQL and Redis in containers.

Where a Docker engine answers, testcontainers starts a Kafka broker in KRaft
mode, PostgreSQL and Redis; `checkout-saga topics create` makes the topics and
one `checkout-saga up` subprocess serves every role against them, exactly as
in production (no embedded server is started: every URL is set). The
scenarios then run through the topics and the CLI only: a happy path, a
declined payment, and a duplicate request.

Where no engine answers (a docker client alone is not enough: the daemon is
pinged), the module is skipped with the reason.

The Kafka image is Confluent's packaging of Apache Kafka (cp-kafka 7.6 is
Apache Kafka 3.6), because testcontainers-python's KafkaContainer drives that
image's start scripts; deploy/docker-compose.yml runs the apache/kafka image.
Override the images with CHECKOUT_TEST_KAFKA_IMAGE, CHECKOUT_TEST_POSTGRES_IMAGE
and CHECKOUT_TEST_REDIS_IMAGE.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Bus, checkout_event, cli, cli_json, uid

KAFKA_IMAGE = os.environ.get("CHECKOUT_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
POSTGRES_IMAGE = os.environ.get("CHECKOUT_TEST_POSTGRES_IMAGE", "postgres:17-alpine")
REDIS_IMAGE = os.environ.get("CHECKOUT_TEST_REDIS_IMAGE", "redis:7-alpine")


def _ping_unix_socket(path: str) -> str | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return f"no Docker engine answers on {path} ({exc.strerror or exc})"
    if not reply.startswith(b"HTTP/1.") or reply.split(b" ")[1:2] != [b"200"]:
        return f"the Docker engine on {path} answered {reply[:40]!r} to a ping"
    return None


def _ping_with_client() -> str | None:
    import docker  # TCP, TLS and SSH hosts: let the Docker SDK speak the protocol

    try:
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException as exc:
        return f"no Docker engine answers at {os.environ.get('DOCKER_HOST')} ({exc})"
    try:
        client.ping()
    except docker.errors.DockerException as exc:
        return f"the Docker engine at {os.environ.get('DOCKER_HOST')} did not answer a ping ({exc})"
    finally:
        client.close()
    return None


def docker_unavailable() -> str | None:
    """None when a Docker engine answers a ping, else a sentence saying why not."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host or host.startswith("unix://"):
        return _ping_unix_socket(host.removeprefix("unix://") or "/var/run/docker.sock")
    return _ping_with_client()


_UNAVAILABLE = docker_unavailable()
pytestmark = pytest.mark.skipif(
    _UNAVAILABLE is not None,
    reason=f"Docker is needed for the container scenarios: {_UNAVAILABLE}",
)


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a process pointed at the containers."""
    # Imported here: only where an engine answers, and testcontainers' old
    # module paths warn (warnings are errors in this suite).
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer

    workdir = tmp_path_factory.mktemp("containers")
    with contextlib.ExitStack() as started:
        kafka = started.enter_context(KafkaContainer(KAFKA_IMAGE).with_kraft())
        postgres = started.enter_context(PostgresContainer(POSTGRES_IMAGE, driver=None))
        redis = started.enter_context(RedisContainer(REDIS_IMAGE))
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=kafka.get_bootstrap_server(),
            DATABASE_URL=postgres.get_connection_url(),
            REDIS_URL=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
            CHECKOUT_DATA_DIR=str(workdir / "data"),
            CHECKOUT_PARTITIONS="4",
            CHECKOUT_PAYMENT_TIMEOUT_SECONDS="5",
            CHECKOUT_STEP_TIMEOUT_SECONDS="10",
            CHECKOUT_LOG_LEVEL="INFO",
        )
        yield env


@pytest.fixture(scope="module")
def served(containers: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, str]]:
    """Topics created by the operator command, then one worker process serving every role."""
    report = cli_json(containers, "topics", "create")
    assert "checkout.requested" in report["created"] + report["existing"], report
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    with log_path.open("ab") as log:
        worker = subprocess.Popen([exe, "up"], env=containers, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        _wait_ready(containers, worker, log_path)
        yield containers
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _wait_ready(env: dict[str, str], worker: subprocess.Popen[bytes], log: Path,
                timeout: float = 120.0) -> None:
    """A full checkout round trip: every consumer group has joined and works."""
    sku = uid("WARM")
    cli(env, "stock", "set", sku, "--price", "100", "--quantity", "10")
    bus = Bus(env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        sid = uid("warm")
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 100)]))
        bus.flush()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-4000:]}"
            found = bus.wait_for("checkout.results", [sid], timeout=2)[sid]
            if found:
                assert found[0]["type"] == "CheckoutSucceeded", found[0]
                return
        raise AssertionError(f"no warm-up result in {timeout}s:\n{log.read_text()[-4000:]}")
    finally:
        bus.close()


@pytest.fixture
def bus(served: dict[str, str]) -> Iterator[Bus]:
    b = Bus(served["KAFKA_BOOTSTRAP_SERVERS"])
    yield b
    b.close()


def stock(env: dict[str, str], sku: str) -> tuple[int, int, int]:
    row: dict[str, Any] = cli_json(env, "stock", "show", sku)
    return row["available"], row["held"], row["sold"]


def test_happy_path(served: dict[str, str], bus: Bus) -> None:
    sku = uid("SKU")
    cli(served, "stock", "set", sku, "--price", "1999", "--quantity", "5")
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 2, 1999)]))
    bus.flush()

    result = bus.result(sid)
    assert result["type"] == "CheckoutSucceeded", result
    assert result["data"]["total"] == 3998
    confirmed = bus.wait_for("orders.confirmed", [sid])[sid]
    assert [c["data"]["order_id"] for c in confirmed] == [result["data"]["order_id"]]
    assert stock(served, sku) == (3, 0, 2)
    assert cli_json(served, "saga", "show", sid)["status"] == "SUCCEEDED"


def test_declined_payment_fails_and_gives_the_stock_back(served: dict[str, str], bus: Bus
                                                         ) -> None:
    sku = uid("SKU")
    cli(served, "stock", "set", sku, "--price", "500", "--quantity", "4")
    sid = uid("cs")
    bus.send("checkout.requested", sid,
             checkout_event(sid, [(sku, 3, 500)], token="tok_chargeDeclined"))
    bus.flush()

    result = bus.result(sid)
    assert result["type"] == "CheckoutFailed", result
    assert result["data"]["reason"] == "PAYMENT_DECLINED"
    deadline = time.monotonic() + 30  # the release is a compensation: it may trail the result
    while stock(served, sku) != (4, 0, 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stock(served, sku) == (4, 0, 0)
    assert cli_json(served, "saga", "show", sid)["status"] == "FAILED"
    assert bus.events_for("orders.confirmed", sid, seconds=1.0) == []


def test_duplicate_request_gives_one_order_and_republishes_its_result(
    served: dict[str, str], bus: Bus
) -> None:
    sku = uid("SKU")
    cli(served, "stock", "set", sku, "--price", "700", "--quantity", "10")
    sid = uid("cs")
    first = checkout_event(sid, [(sku, 1, 700)])
    bus.send("checkout.requested", sid, first)
    bus.send("checkout.requested", sid, first)  # the same event delivered twice
    bus.flush()
    result = bus.result(sid)
    assert result["type"] == "CheckoutSucceeded", result

    # A new request for the finished session: its result again, nothing else.
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 700)]))
    bus.flush()
    results = bus.wait_for("checkout.results", [sid], count=2)[sid]
    assert len(results) >= 2, results
    assert {r["data"]["order_id"] for r in results} == {result["data"]["order_id"]}
    time.sleep(1.0)  # room for a wrong second order to show up
    assert len(bus.events_for("orders.confirmed", sid, seconds=0.5)) == 1
    assert stock(served, sku) == (9, 0, 1)
