"""`Coalescer`: calls made in one loop turn reach the batch function together,
each caller gets its own key's answer, a key never appears twice in a batch,
and a failing batch fails every caller in it (and nobody else)."""

from __future__ import annotations

import asyncio

import pytest

from messaging.coalesce import Coalescer


async def within(aw):  # type: ignore[no-untyped-def]
    """A caller whose answer was lost fails the test instead of hanging it."""
    return await asyncio.wait_for(aw, timeout=5)


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[dict[str, int]] = []
        self.fail_on = fail_on

    async def run(self, batch: dict[str, int]) -> dict[str, int]:
        self.batches.append(dict(batch))
        await asyncio.sleep(0)  # a real batch waits on its statement
        if self.fail_on in batch:
            raise ConnectionError("lost the database")
        return {key: value * 10 for key, value in batch.items()}


async def test_calls_of_one_turn_are_one_batch_and_each_gets_its_answer() -> None:
    rec = Recorder()
    coalesce = Coalescer(rec.run)
    answers = await within(asyncio.gather(*(coalesce(f"k{i}", i) for i in range(50))))
    assert answers == [i * 10 for i in range(50)]
    assert rec.batches == [{f"k{i}": i for i in range(50)}]


async def test_a_key_already_waiting_goes_to_the_next_batch() -> None:
    rec = Recorder()
    coalesce = Coalescer(rec.run)
    answers = await within(asyncio.gather(coalesce("a", 1), coalesce("b", 2), coalesce("a", 3)))
    assert answers == [10, 20, 30]
    assert rec.batches == [{"a": 1, "b": 2}, {"a": 3}]


async def test_calls_of_later_turns_are_later_batches() -> None:
    rec = Recorder()
    coalesce = Coalescer(rec.run)
    assert await coalesce("a", 1) == 10
    assert await coalesce("a", 2) == 20
    assert rec.batches == [{"a": 1}, {"a": 2}]


async def test_a_failed_batch_fails_its_callers_only() -> None:
    rec = Recorder(fail_on="bad")
    coalesce = Coalescer(rec.run)
    first = await asyncio.gather(coalesce("bad", 1), coalesce("x", 2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in first)
    assert await coalesce("x", 3) == 30  # the next batch runs normally


async def test_a_cancelled_caller_leaves_the_others_their_answers() -> None:
    rec = Recorder()
    coalesce = Coalescer(rec.run)
    gone = asyncio.ensure_future(coalesce("gone", 1))
    stays = asyncio.ensure_future(coalesce("stays", 2))
    await asyncio.sleep(0)
    gone.cancel()
    assert await stays == 20
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_a_batch_without_an_answer_for_a_key_says_so() -> None:
    async def forgetful(batch: dict[str, int]) -> dict[str, int]:
        return {}

    with pytest.raises(KeyError, match="no answer for 'a'"):
        await Coalescer(forgetful)("a", 1)


async def test_a_batch_cancelled_at_shutdown_cancels_its_callers() -> None:
    started = asyncio.Event()

    async def stuck(batch: dict[str, int]) -> dict[str, int]:
        started.set()
        await asyncio.Event().wait()
        return {}

    coalesce = Coalescer(stuck)
    caller = asyncio.ensure_future(coalesce("a", 1))
    await within(started.wait())
    for flush in list(coalesce._flushing):  # what loop shutdown does to pending tasks
        flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(caller)
