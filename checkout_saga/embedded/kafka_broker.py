"""Apache Kafka's own broker for the embedded stack: one node in KRaft mode, broker and controller.

The jars come from Maven Central, fetched once with Maven from the pom in ``kafka_files/`` into
a cache folder outside the clone (``~/.cache/checkout-saga/kafka-<version>``, or
``CHECKOUT_KAFKA_HOME``), guarded by a file lock so that two processes never fetch at once.
Once fetched, Maven is never called again: starting a broker needs no network.

What makes it start in seconds on a small machine: the JVM runs only its quick compiler
(``-XX:TieredStopAtLevel=1``), with the serial collector, and loads its classes from class-data
archives (AppCDS) made once, right after the fetch, by a training run of the storage tool and
of a broker (about 7 s -> 2.5-4 s to a broker that answers, measured on 2 busy cores).

Run ``python -m checkout_saga.embedded.kafka_broker`` to fetch and prepare it ahead of time (the Makefile
does).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from checkout_saga.embedded.processes import free_port, spawn, tail, tcp_open
from messaging.errors import CheckoutSagaError

__all__ = ["KAFKA_VERSION", "MIN_JAVA", "Java", "KafkaInstall", "KafkaSetupError", "answers",
           "find_java", "install", "kafka_home", "server_properties"]

_log = logging.getLogger(__name__)
KAFKA_VERSION = "4.4.0"  # as in kafka_files/pom.xml
MIN_JAVA = 17  # Kafka 4's broker needs Java 17
_FILES = Path(__file__).with_name("kafka_files")
_READY = "classpath.txt"  # written last: the jars are complete
# Sized for a 2-core, 24 GiB machine that also runs PostgreSQL, Redis and the workers: Kafka
# keeps its data in the page cache, not the heap; 1 GiB is the heap kafka-server-start.sh gives.
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-XX:-UsePerfData", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
BROKER_MAIN = "kafka.Kafka"
STORAGE_MAIN = "kafka.tools.StorageTool"


class KafkaSetupError(CheckoutSagaError, RuntimeError):
    """The broker's jars could not be fetched or prepared; the message says what to do."""


@dataclass(frozen=True)
class Java:
    path: Path
    major: int


def find_java(env: Mapping[str, str]) -> Java | None:
    """A Java of version MIN_JAVA or newer: JAVA_HOME's first, then the one on PATH."""
    candidates = []
    if env.get("JAVA_HOME"):
        candidates.append(Path(env["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java", path=env.get("PATH"))
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        major = _java_major(candidate)
        if major is not None and major >= MIN_JAVA:
            return Java(candidate.resolve(), major)
    return None


def _java_major(java: Path) -> int | None:
    if not os.access(java, os.X_OK):
        return None
    release = java.resolve().parent.parent / "release"  # JAVA_VERSION="17.0.15"
    with contextlib.suppress(OSError):
        found = re.search(r'^JAVA_VERSION="(\d+)', release.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1))
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def kafka_home(env: Mapping[str, str]) -> Path:
    """Where the jars and class-data archives of KAFKA_VERSION are kept."""
    if env.get("CHECKOUT_KAFKA_HOME"):
        return Path(env["CHECKOUT_KAFKA_HOME"]).expanduser().resolve()
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (cache / "checkout-saga" / f"kafka-{KAFKA_VERSION}").resolve()


@dataclass(frozen=True)
class KafkaInstall:
    """The fetched jars, and how to run a Kafka main class with them."""

    home: Path
    java: Java

    @property
    def classpath(self) -> str:
        names = (self.home / "lib" / _READY).read_text().split()
        return os.pathsep.join(str(self.home / "lib" / name) for name in names)

    def archive(self, main: str) -> Path:
        """The class-data archive of `main` for this Java (a JDK update makes a new one)."""
        st = self.java.path.stat()
        jvm = hashlib.sha1(f"{self.java.path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        return self.home / f"{main.rsplit('.', 1)[-1].lower()}-{jvm[:10]}.jsa"

    def argv(self, main: str, *args: str, dump_archive: Path | None = None) -> list[str]:
        options = list(JVM_OPTIONS)
        archive = self.archive(main)
        if dump_archive is not None:
            options.append(f"-XX:ArchiveClassesAtExit={dump_archive}")
        elif archive.exists():
            options.append(f"-XX:SharedArchiveFile={archive}")
        extra = os.environ.get("CHECKOUT_KAFKA_JAVA_OPTIONS", "").split()
        return [str(self.java.path), *options, *extra,
                f"-Dlog4j2.configurationFile={_FILES / 'log4j2.properties'}",
                "-cp", self.classpath, main, *args]

    def format_storage(self, config: Path, log: Path, *, cluster_id: str | None = None,
                       dump_archive: Path | None = None) -> None:
        """Write meta.properties and the bootstrap metadata into the log folder of `config`
        (every node of one cluster is formatted with the same `cluster_id`)."""
        argv = self.argv(STORAGE_MAIN, "format", "--ignore-formatted", "--cluster-id",
                         cluster_id or new_cluster_id(), "--config", str(config),
                         dump_archive=dump_archive)
        with log.open("ab") as out:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=120, check=False).returncode
        if code != 0:
            raise KafkaSetupError(f"kafka-storage format exited with code {code}; end of {log}:\n"
                                  f"{tail(log)}")


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, as `kafka-storage random-uuid`
    makes them, and as it does never starting with "-" (the tool would take it for an option)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not found.startswith("-"):
            return found


def server_properties(log_dir: Path, port: int, controller_port: int, *, node_id: int = 1,
                      voters: Mapping[int, int] | None = None) -> str:
    """One node that is broker and controller on loopback, with settings for tests and demos.

    `voters` maps every node id of the cluster to its controller port (None: this node alone).
    The quorum is static (``controller.quorum.voters``), so nothing about the controllers'
    ports is kept in the log: a restart on other ports finds its data and elects at once.
    With three nodes or more, internal topics get three replicas and two in sync, as deploy/
    runs them; with one node, one.
    """
    voters = dict(voters) if voters else {node_id: controller_port}
    replicas = "3" if len(voters) >= 3 else "1"
    min_isr = "2" if len(voters) >= 3 else "1"
    cluster = {
        # A killed node is fenced, and its partitions get new leaders, after 3 s rather than
        # the default 9 s: on one machine, heartbeats are never late for network reasons.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "1000",
    } if len(voters) > 1 else {}
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(
            f"{node}@127.0.0.1:{cport}" for node, cport in sorted(voters.items())),
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # Internal topics: a few partitions only (each one costs files, start-up and fetch
        # work; the defaults are 50).
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": "1",
        # The project creates its topics with their partitions and replicas (`topics create`);
        # these are only for topics others create (faust's changelogs).
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        # A group's first member does not wait 3 s for others; short sessions are allowed.
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "500",
        "group.consumer.min.session.timeout.ms": "1000",
        "group.consumer.session.timeout.ms": "6000",
        "group.consumer.min.heartbeat.interval.ms": "500",
        "group.consumer.heartbeat.interval.ms": "1000",
        # Two cores: fewer request threads than the defaults (3 network, 8 I/O).
        "num.network.threads": "2",
        "num.io.threads": "4",
        **cluster,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def answers(bootstrap: str) -> bool:
    """The broker answers a metadata request and lists itself (it is unfenced)."""
    return bool(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2).brokers)


# ---- fetch and prepare, once per machine ----------------------------------------------------


def install(home: Path, java: Java) -> KafkaInstall:
    """The jars and class-data archives in `home`, fetched and made first where missing."""
    found = KafkaInstall(home, java)
    if _complete(found):
        return found
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):  # another process may be fetching right now: wait for it
        if not (home / "lib" / _READY).exists():
            _fetch(home)
        for main in (STORAGE_MAIN, BROKER_MAIN):
            if not found.archive(main).exists():
                _train(found)
                break
    return found


def _complete(found: KafkaInstall) -> bool:
    return (found.home / "lib" / _READY).exists() and all(
        found.archive(main).exists() for main in (STORAGE_MAIN, BROKER_MAIN))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(home: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(
            f"Apache Kafka {KAFKA_VERSION}'s jars are not in {home} and Maven (mvn) is not on "
            f"PATH to fetch them: install Maven, or set CHECKOUT_EMBEDDED_BROKER=tansu")
    _log.warning("fetching Apache Kafka %s's jars with Maven into %s (once)", KAFKA_VERSION, home)
    part, log = home / "lib.part", home / "fetch.log"
    shutil.rmtree(part, ignore_errors=True)
    shutil.copyfile(_FILES / "pom.xml", home / "pom.xml")
    argv = [mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(home / "pom.xml"),
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={part}"]
    t0 = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              check=False, timeout=900).returncode
    jars = sorted(p.name for p in part.glob("*.jar")) if part.is_dir() else []
    if code != 0 or not any(name.startswith("kafka_2.13-") for name in jars):
        raise KafkaSetupError(f"Maven could not fetch Apache Kafka {KAFKA_VERSION} (exit code "
                              f"{code}); end of {log}:\n{tail(log)}")
    (part / _READY).write_text("\n".join(jars) + "\n")
    shutil.rmtree(home / "lib", ignore_errors=True)
    part.rename(home / "lib")
    _log.warning("fetched %d jars in %.0fs", len(jars), time.monotonic() - t0)


def _train(found: KafkaInstall) -> None:
    """Run the storage tool and a broker once, recording the classes they load (AppCDS)."""
    _log.warning("preparing the Kafka broker's class-data archives (once)")
    work = found.home / f"train-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log, config = work / "train.log", work / "server.properties"
    port = free_port()
    config.write_text(server_properties(work / "data", port, free_port()))
    try:
        dump = _dump_path(found.archive(STORAGE_MAIN))
        found.format_storage(config, log, dump_archive=dump)
        dump.rename(found.archive(STORAGE_MAIN))
        dump = _dump_path(found.archive(BROKER_MAIN))
        proc = spawn(found.argv(BROKER_MAIN, str(config), dump_archive=dump), log,
                     death_signal=signal.SIGTERM)
        try:
            _wait_until_answers(proc, port, log)
        finally:
            proc.send_signal(signal.SIGTERM)  # the archive is written as the JVM exits
            proc.wait(60)
        if not dump.exists():
            raise KafkaSetupError(f"the training broker wrote no class-data archive; end of "
                                  f"{log}:\n{tail(log)}")
        dump.rename(found.archive(BROKER_MAIN))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _dump_path(archive: Path) -> Path:
    return archive.with_name(f"{archive.name}.{os.getpid()}.part")


def _wait_until_answers(proc: subprocess.Popen[bytes], port: int, log: Path,
                        timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KafkaSetupError(f"the training broker exited with code {proc.returncode}; "
                                  f"end of {log}:\n{tail(log)}")
        with contextlib.suppress(Exception):
            if tcp_open(port) and answers(f"127.0.0.1:{port}"):
                return
        time.sleep(0.1)
    raise KafkaSetupError(f"the training broker did not answer within {timeout:.0f}s; end of "
                          f"{log}:\n{tail(log)}")


def main() -> int:
    """Fetch and prepare the broker for this machine (the Makefile's install step)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    java = find_java(os.environ)
    if java is None:
        print(f"no Java {MIN_JAVA}+ found: the embedded stack will use tansu instead of Apache "
              f"Kafka", file=sys.stderr)
        return 0
    try:
        found = install(kafka_home(os.environ), java)
    except KafkaSetupError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"Apache Kafka {KAFKA_VERSION} ready in {found.home}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
