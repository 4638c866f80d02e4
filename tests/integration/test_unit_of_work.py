"""The unit of work (messaging/unit_of_work.py) on the real PostgreSQL: its outbox rows
reach the publisher only once the transaction has committed, and never when it raised."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from messaging.db import create_pool, messaging_ddl
from messaging.message import OutgoingMessage
from messaging.outbox import Written
from messaging.unit_of_work import unit_of_work

SCHEMA = "uow"


class Recording:
    """A publisher that notes what it was handed."""

    def __init__(self) -> None:
        self.handed: list[Written] = []

    def publish(self, written: Written) -> None:
        self.handed.append(written)

    def wake(self) -> None:
        return None


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 3)
    await p.execute(f"CREATE SCHEMA {SCHEMA}; {messaging_ddl(SCHEMA)}")
    yield p
    await p.close()


def message(key: str) -> OutgoingMessage:
    return OutgoingMessage("uow.topic", key, f"v-{key}".encode())


async def outbox_ids(pool: asyncpg.Pool) -> list[int]:
    return [r["id"] for r in await pool.fetch(f"SELECT id FROM {SCHEMA}.outbox ORDER BY id")]


async def test_rows_are_published_after_the_commit(pool: asyncpg.Pool) -> None:
    publisher = Recording()
    async with unit_of_work(pool, SCHEMA, publisher) as work:
        await work.send([message("a"), message("b")])
        await work.send([message("c")])
        assert publisher.handed == [], "handed over before the commit"
        assert await outbox_ids(pool) == [], "another connection sees uncommitted rows"
    [written] = publisher.handed
    assert written.ids == await outbox_ids(pool)
    assert [m.key for m in written.messages] == ["a", "b", "c"]


async def test_nothing_is_written_or_published_when_the_work_raises(pool: asyncpg.Pool) -> None:
    publisher = Recording()
    with pytest.raises(RuntimeError, match="handler failed"):
        async with unit_of_work(pool, SCHEMA, publisher) as work:
            await work.send([message("a")])
            raise RuntimeError("handler failed")
    assert publisher.handed == []
    assert await outbox_ids(pool) == []


async def test_without_a_transaction_each_statement_commits_alone(pool: asyncpg.Pool) -> None:
    publisher = Recording()
    async with unit_of_work(pool, SCHEMA, publisher, atomic=False) as work:
        assert not work.conn.is_in_transaction()
        await work.send([message("a")])
        assert len(await outbox_ids(pool)) == 1  # already committed, as the one statement
    [written] = publisher.handed
    assert written.ids == await outbox_ids(pool)


async def test_rows_a_statement_of_its_own_wrote_are_published_with_the_rest(
        pool: asyncpg.Pool) -> None:
    publisher = Recording()
    async with unit_of_work(pool, SCHEMA, publisher) as work:
        await work.send([message("a")])
        work.wrote(Written([10**9], [message("own")]))
    assert [m.key for m in publisher.handed[0].messages] == ["a", "own"]
