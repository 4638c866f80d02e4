"""The small HTTP server every worker runs: ``/metrics`` (Prometheus),
``/healthz`` (liveness) and ``/readyz`` (readiness).

The server runs in a daemon thread, so a scrape never waits on a busy event
loop; liveness is a heartbeat the event loop writes every second, so a loop
that is stuck shows as not alive. Port 0 (the default) takes a free port:
the process logs it and writes ``<data dir>/metrics/<pid>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from messaging.metrics import READY, REGISTRY

log = logging.getLogger(__name__)


class Heartbeat:
    """Written by the event loop every ``interval``; read by the server thread."""

    def __init__(self, interval: float = 1.0, stale_after: float = 15.0) -> None:
        self.interval = interval
        self.stale_after = stale_after
        self.last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.stale_after

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.last = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


class MetricsServer:
    def __init__(self, host: str, port: int, ready: Callable[[], bool],
                 alive: Callable[[], bool]) -> None:
        self._ready = ready
        self._alive = alive
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._port_file: Path | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{self.port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server._alive()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
                elif path == "/readyz":
                    ok = server._alive() and server._ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        return Handler

    def start(self, port_dir: Path | None = None, **about: Any) -> MetricsServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        log.info("metrics on %s/metrics (health %s/healthz, readiness %s/readyz)",
                 self.url, self.url, self.url)
        if port_dir is not None:
            port_dir.mkdir(parents=True, exist_ok=True)
            self._port_file = port_dir / f"{os.getpid()}.json"
            self._port_file.write_text(json.dumps(
                {"pid": os.getpid(), "url": self.url, "port": self.port, **about}))
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._port_file is not None:
            self._port_file.unlink(missing_ok=True)


def port_dir(data_dir: Path) -> Path:
    """Where each worker writes ``<pid>.json`` with its metrics URL."""
    return data_dir / "metrics"


class WorkerObserver:
    """What a worker process runs for its operators: the metrics server and
    the event loop's heartbeat. ``start`` inside the running loop; ``stop``
    when the worker stops."""

    def __init__(self, server: MetricsServer | None, heartbeat: asyncio.Task[None] | None,
                 stop_beat: asyncio.Event) -> None:
        self.server = server
        self._heartbeat = heartbeat
        self._stop_beat = stop_beat

    @classmethod
    def start(cls, host: str, port: int, data_dir: Path, ready: Callable[[], bool],
              **about: Any) -> WorkerObserver:
        stop_beat = asyncio.Event()
        if port < 0:
            return cls(None, None, stop_beat)
        beat = Heartbeat()

        def is_ready() -> bool:
            ok = ready()
            READY.set(1 if ok else 0)
            return ok

        server = MetricsServer(host, port, is_ready, beat.alive).start(port_dir(data_dir), **about)
        return cls(server, asyncio.get_running_loop().create_task(beat.run(stop_beat)), stop_beat)

    def stop(self) -> None:
        self._stop_beat.set()
        if self.server is not None:
            self.server.stop()
