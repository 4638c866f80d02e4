"""Which offsets the consumer loop may commit while batches run side by side:
only what every earlier batch has finished, never past one still running, and
nothing from a batch that gave up (stopping mid-retry)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from messaging.worker import ConsumerLoop, _Dispatch, _next_offsets


@dataclass
class FakeMessage:
    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def loop() -> ConsumerLoop:
    return ConsumerLoop("test", {}, ["t"], handler=None, producer=None)  # type: ignore[arg-type]


def test_next_offsets_are_one_past_the_highest_per_partition() -> None:
    msgs = [FakeMessage("a", 0, 5), FakeMessage("a", 0, 3), FakeMessage("a", 1, 9), FakeMessage("b", 0, 0)]
    assert _next_offsets(msgs) == {("a", 0): 6, ("a", 1): 10, ("b", 0): 1}  # type: ignore[arg-type]


async def dispatch(result: bool | None, offsets: dict[tuple[str, int], int]) -> _Dispatch:
    """A batch that is done with ``result``, or still running (None)."""
    gate = asyncio.Event()

    async def handle() -> bool:
        await gate.wait()
        return bool(result)

    task = asyncio.create_task(handle())
    if result is not None:
        gate.set()
        await task
    return _Dispatch(task, set(), offsets)


async def test_a_finished_batch_behind_a_running_one_waits() -> None:
    consumer = loop()
    running = await dispatch(None, {("t", 0): 10})
    later = await dispatch(True, {("t", 0): 20})
    inflight = deque([running, later])
    assert consumer._settle(inflight) is False
    assert consumer._pending == {} and len(inflight) == 2
    running.task.cancel()


async def test_finished_batches_settle_oldest_first() -> None:
    consumer = loop()
    inflight = deque(
        [await dispatch(True, {("t", 0): 10}), await dispatch(True, {("t", 0): 20, ("t", 1): 4}),
         await dispatch(None, {("t", 0): 30})])
    assert consumer._settle(inflight) is False
    assert consumer._pending == {("t", 0): 20, ("t", 1): 4}
    assert len(inflight) == 1
    inflight[0].task.cancel()


async def test_a_batch_that_gave_up_stops_all_commits_from_it_on() -> None:
    consumer = loop()
    inflight = deque(
        [await dispatch(True, {("t", 0): 10}), await dispatch(False, {("t", 0): 20}),
         await dispatch(True, {("t", 0): 30})])
    assert consumer._settle(inflight) is True
    assert consumer._pending == {("t", 0): 10}
