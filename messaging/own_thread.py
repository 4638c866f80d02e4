"""One daemon thread that runs calls in order, for asyncio code.

For a librdkafka consumer, whose calls must not overlap. A daemon, unlike a
``ThreadPoolExecutor``'s thread (joined at interpreter exit), so that a call
stuck in librdkafka (a close with the broker gone) cannot keep the process
alive after its stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class OwnThread:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)

    def call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """Run ``fn(*args)`` on the thread, after every call made before."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fut, fn, args))
        return asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        """The thread ends once the calls already made have run."""
        self._jobs.put(None)
