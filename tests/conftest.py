"""Session fixtures: one real stack (embedded servers, or the URLs in the
environment) and one `checkout-saga up` worker process for the e2e tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import Bus, checkout_event, cli, stop_process, uid

from checkout_saga.embedded.stack import EmbeddedStack, endpoints_from_env
from checkout_saga.ops.supervisor import settings_env


@dataclass
class Stack:
    env: dict[str, str]
    servers: EmbeddedStack
    workdir: Path

    @property
    def bootstrap(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Outside pytest's temp tree: a second pytest run on the machine deletes all but the
    # newest three trees, and with them this run's PostgreSQL data folder (seen: a run on
    # the side killed the suite's PostgreSQL mid-run).
    workdir = Path(tempfile.mkdtemp(prefix="checkout-saga-session-"))
    try:
        yield from _session_stack(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _session_stack(workdir: Path) -> Iterator[Stack]:
    kafka, database, redis = endpoints_from_env(os.environ)
    servers = EmbeddedStack(workdir / "servers")
    found = servers.start(kafka=kafka, database=database, redis=redis)
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=found.kafka_bootstrap,
        DATABASE_URL=found.database_url,
        REDIS_URL=found.redis_url,
        CHECKOUT_DATA_DIR=str(workdir / "data"),
        CHECKOUT_PAYMENT_TIMEOUT_SECONDS="6",
        CHECKOUT_GATEWAY_LATE_ANSWER_SECONDS="1",
        CHECKOUT_STEP_TIMEOUT_SECONDS="5",
        CHECKOUT_LOG_LEVEL="INFO",
        # Gauges from queries and librdkafka's lag figures, often enough for a test to see.
        CHECKOUT_METRICS_SAMPLE_SECONDS="0.5",
        CHECKOUT_METRICS_LAG_INTERVAL_MS="1000",
        # Two partitions per topic, not eight: every partition costs the
        # embedded broker CPU even when idle, and the suite is CPU-bound.
        CHECKOUT_PARTITIONS="2",
    )
    # What the embedded broker's clients need (nothing on Apache Kafka; short
    # timeouts on the tansu fallback).
    env.update(settings_env(found.kafka_bootstrap, found.database_url, found.redis_url,
                            servers.client_settings))
    try:
        # As in production (the topics job): every topic exists with its
        # partition count before anything produces or reads.
        cli(env, "topics", "create")
        yield Stack(env, servers, workdir)
    finally:
        servers.stop()


@dataclass
class Workers:
    stack: Stack
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *roles: str, **extra_env: str) -> subprocess.Popen[bytes]:
        env = dict(self.stack.env)
        env.update(extra_env)
        args = [str(Path(sys.executable).with_name("checkout-saga")), "up"]
        for role in roles:
            args += ["--role", role]
        log = open(self.stack.workdir / f"worker-{len(self.procs)}.log", "ab")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        stop_process(proc, sig)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def wait_ready(stack: Stack, timeout: float = 90.0) -> None:
    """A full checkout round trip: every consumer group has joined and works."""
    sku = uid("WARM")
    cli(stack.env, "stock", "set", sku, "--price", "100", "--quantity", "10")
    bus = Bus(stack.bootstrap)
    try:
        sid = uid("warm")
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 100)]))
        bus.flush()
        result = bus.result(sid, timeout)
        assert result["type"] == "CheckoutSucceeded", result
    finally:
        bus.close()


@pytest.fixture(scope="session")
def workers(stack: Stack) -> Iterator[Workers]:
    group = Workers(stack)
    group.start()
    try:
        wait_ready(stack)
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def bus(stack: Stack) -> Iterator[Bus]:
    b = Bus(stack.bootstrap)
    yield b
    b.close()


@pytest.fixture
def env(stack: Stack) -> dict[str, str]:
    return stack.env


def poll_until(check, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


@pytest.fixture
async def scratch_database(stack: Stack):  # type: ignore[no-untyped-def]
    """A factory of fresh, empty databases on the stack's PostgreSQL server,
    dropped afterwards: for tests whose rows no session worker may touch
    (e.g. a sweeper race that must count every release)."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    admin_dsn = stack.env["DATABASE_URL"]
    made: list[str] = []

    async def make() -> str:
        name = uid("scratch").replace("-", "_")
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        made.append(name)
        return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))

    yield make
    for name in made:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
def own_workdir() -> Iterator[Path]:
    """A folder for a stack of the test's own, outside pytest's temp tree: pytest
    resets that tree's root to 0700 whenever a pytest run starts, which would lock
    the embedded PostgreSQL (another user) out of its data folder mid-test."""
    path = Path(tempfile.mkdtemp(prefix="checkout-saga-own-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
