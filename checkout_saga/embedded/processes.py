"""Child processes that die with us, and the small socket checks the embedded servers need.

A server started by the embedded stack must never outlive the Python process that started it,
even when that process is killed with SIGKILL: every child gets PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import queue
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

__all__ = ["free_port", "port_is_free", "spawn", "tail", "tcp_open"]

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether `port` can be bound on loopback right now (a server may take it a moment later)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


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


def spawn(argv: list[str], log: Path, *, death_signal: int, user: pwd.struct_passwd | None = None,
          env: Mapping[str, str] | None = None, cwd: Path | None = None
          ) -> subprocess.Popen[bytes]:
    """Start `argv` with its output appended to `log`; it gets `death_signal` when we die."""
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


def tail(log: Path, since: int = 0, size: int = 4000) -> str:
    """The end of what a server wrote to `log` after byte `since`."""
    try:
        with log.open("rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
