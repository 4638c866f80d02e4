"""Calls made in one event-loop turn, run as one.

A payment lane asks the gateway for many answers at once (``asyncio.gather``).
Booked one by one, each call costs an autocommit (a WAL flush) and a
connection from a small pool: at full speed the simulated gateway made seven
commits for every one the whole saga made. `Coalescer` hands the calls that
arrive before the loop's next turn to one batch function, which does them in
one statement. A key already waiting in the open batch starts a new batch,
so a batch never names a key twice (one statement may not change a row twice)
and two calls with one key behave as two calls, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class Coalescer(Generic[K, V, R]):
    """``await coalescer(key, value)`` gives ``run(batch)[key]``, where ``batch``
    holds every value passed in the same loop turn under a distinct key."""

    def __init__(self, run: Callable[[dict[K, V]], Awaitable[Mapping[K, R]]]) -> None:
        self._run = run
        self._open: dict[K, tuple[V, asyncio.Future[R]]] | None = None
        self._flushing: set[asyncio.Task[None]] = set()  # strong references

    async def __call__(self, key: K, value: V) -> R:
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None or key in batch:
            batch = self._open = {}
            loop.call_soon(self._start, batch)
        future: asyncio.Future[R] = loop.create_future()
        batch[key] = (value, future)
        return await future

    def _start(self, batch: dict[K, tuple[V, asyncio.Future[R]]]) -> None:
        if self._open is batch:
            self._open = None
        task = asyncio.ensure_future(self._flush(batch))
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: dict[K, tuple[V, asyncio.Future[R]]]) -> None:
        waiting = {key: value for key, (value, future) in batch.items() if not future.done()}
        if not waiting:
            return
        try:
            results = await self._run(waiting)
        except asyncio.CancelledError:  # the loop is shutting down: so are the callers
            for _value, future in batch.values():
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001  (handed on: every caller sees the failure)
            for _value, future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for key, (_value, future) in batch.items():
            if not future.done():
                if key in results:
                    future.set_result(results[key])
                else:
                    future.set_exception(KeyError(f"the batch gave no answer for {key!r}"))
