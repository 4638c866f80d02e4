"""Run N worker processes of each role and restart any that dies.

Every worker is stateless (its state is in PostgreSQL, its position in its
consumer group), so a dead worker is simply started again: its partitions go
to the others of its group after the session timeout, and come back with a
rebalance once it is up. A worker that dies right after starting (a server
down, say) is restarted with exponential backoff, capped, so a long outage
costs little; one that ran for ``stable_after`` seconds starts again at once.

Children run ``checkout-saga up --role R`` with the connection URLs in their
environment, each in its own session (a terminal's ^C reaches only the
supervisor, which stops them in order), and die with the thread that started
them (``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
WORKER_COMMAND = (sys.executable, "-c", "from checkout_saga.cli import main; main()")


def _die_with_parent() -> None:  # runs between fork and exec: keep it minimal
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Child:
    role: str
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(
        self,
        roles: Sequence[str],
        per_role: int,
        env: Mapping[str, str],
        log_dir: Path | None = None,
        *,
        command: Sequence[str] = WORKER_COMMAND,
        min_backoff: float = 0.2,
        max_backoff: float = 10.0,
        stable_after: float = 10.0,
    ) -> None:
        if per_role < 1:
            raise ValueError("per_role must be at least 1")
        self.children = [Child(role, i) for role in roles for i in range(per_role)]
        self._env = dict(env)
        self._log_dir = log_dir
        self._command = list(command)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._stable_after = stable_after
        self._lock = threading.Lock()
        self._stopping = False
        self._logs: list[IO[bytes]] = []
        self.restarts = 0

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for child in self.children:
                self._spawn(child)

    def run(self, stop: threading.Event, interval: float = 0.1) -> None:
        """Watch and restart until ``stop`` is set, then stop every child."""
        try:
            if not any(c.proc for c in self.children):
                self.start()
            while not stop.wait(interval):
                self.check()
        finally:
            self.stop()

    def check(self) -> None:
        """One pass: note deaths, restart the children whose backoff is over."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._note_exit(child, now)
                if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                    self.restarts += 1
                    self._spawn(child)

    def stop(self, timeout: float = 20.0) -> None:
        with self._lock:
            self._stopping = True
            live = [c for c in self.children if c.alive]
            for child in live:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in live:
                assert child.proc is not None
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0fs; killing it", child.name, timeout)
                    child.proc.kill()
                    child.proc.wait()
            for out in self._logs:
                out.close()
            self._logs.clear()

    # ---- chaos ------------------------------------------------------------------------------

    def kill_one(self, rng: random.Random, role: str | None = None,
                 sig: int = signal.SIGKILL) -> Child | None:
        """Send ``sig`` to one live child (of ``role``, if given) chosen at random."""
        with self._lock:
            live = [c for c in self.children if c.alive and (role is None or c.role == role)]
            if self._stopping or not live:
                return None
            child = rng.choice(live)
            assert child.proc is not None
            log.warning("chaos: signal %d to %s (pid %d)", sig, child.name, child.proc.pid)
            child.proc.send_signal(sig)
            return child

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {c.name: c.proc.pid for c in self.children if c.proc is not None and c.alive}

    # ---- internals ------------------------------------------------------------------------

    def _note_exit(self, child: Child, now: float) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        child.exits.append(code)
        ran = now - child.started_at
        if ran >= self._stable_after:
            child.backoff = self._min_backoff
        else:
            child.backoff = min(self._max_backoff, max(self._min_backoff, child.backoff * 2))
        child.proc = None
        child.restart_at = now + child.backoff
        log.warning("%s exited with %s after %.1fs; restarting in %.1fs",
                    child.name, code, ran, child.backoff)

    def _spawn(self, child: Child) -> None:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self._log_dir / f"{child.name}.log", "ab")  # noqa: SIM115 - kept open
            self._logs.append(handle)
            out = handle
        env = dict(self._env, CHECKOUT_WORKER_NAME=child.name)
        child.proc = subprocess.Popen(
            [*self._command, "up", "--role", child.role],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        child.started_at = time.monotonic()
        child.starts += 1
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.proc.pid)


def child_env(base: Mapping[str, str], settings_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of every child: ours, plus the resolved connection settings."""
    env = dict(base)
    env.update({k: v for k, v in settings_env.items() if v})
    return env


def settings_env(kafka: str, database: str, redis: str,
                 client_settings: Mapping[str, object] | None = None) -> dict[str, str]:
    """The connection settings as environment variables, with what the embedded broker's
    clients need (``EmbeddedStack.client_settings``; nothing for Apache Kafka)."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka, "DATABASE_URL": database, "REDIS_URL": redis}
    env |= {name.upper(): str(value) for name, value in (client_settings or {}).items()}
    return env


def current_env() -> dict[str, str]:
    return dict(os.environ)
