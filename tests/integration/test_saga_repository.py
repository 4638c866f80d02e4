"""The saga repository's one write path on the real PostgreSQL: a decision's row, log
entries and outbox rows go in together, and a lost race writes none of them, even
outside a transaction (the coordinator's reply path runs without one)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from messaging.db import create_pool, migrate
from messaging.message import OutgoingMessage
from saga import repository
from saga import schema as saga_schema
from saga.outcomes import rejected
from saga.repository import SagaMovedOn, SagaRow


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 3)
    await migrate(p, "saga", saga_schema.DDL)
    yield p
    await p.close()


async def counts(conn: asyncpg.Connection, session: str) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT version FROM saga.instances WHERE checkout_session_id = $1) AS version, "
        "(SELECT count(*) FROM saga.step_log WHERE checkout_session_id = $1) AS logged, "
        "(SELECT count(*) FROM saga.outbox WHERE key = $1) AS sent", session)
    return row["version"], row["logged"], row["sent"]


async def test_a_write_moves_the_row_and_adds_its_log_and_outbox(pool: asyncpg.Pool) -> None:
    state = rejected("repo-1", "test")
    async with pool.acquire() as conn:
        assert await repository.start(conn, state) is not None
        assert await repository.start(conn, state) is None  # the session has its saga
        loaded = await repository.load(conn, "repo-1")
        assert loaded is not None
        saga, _ = loaded
        saga.absorb(state, (30.0, "tok"), None)
        written = await repository.write(
            conn, {"repo-1": saga}, [("repo-1", "-", "test", "moved")],
            [OutgoingMessage("t", "repo-1", b"v")])
        assert len(written.ids) == 1
        assert await counts(conn, "repo-1") == (2, 1, 1)
        due_at = await conn.fetchval("SELECT deadline_at - now() FROM saga.instances "
                                     "WHERE checkout_session_id = 'repo-1'")
        assert 29 < due_at.total_seconds() <= 30  # on PostgreSQL's clock


async def test_a_lost_race_writes_nothing_outside_a_transaction(pool: asyncpg.Pool) -> None:
    state = rejected("repo-2", "test")
    async with pool.acquire() as conn:
        await repository.start(conn, state)
        stale = SagaRow(state, 1, None)
        await conn.execute("UPDATE saga.instances SET version = 2 WHERE checkout_session_id = 'repo-2'")
        stale.absorb(state, None, None)
        assert not conn.is_in_transaction()
        with pytest.raises(SagaMovedOn):
            await repository.write(conn, {"repo-2": stale}, [("repo-2", "-", "test", "lost")],
                                   [OutgoingMessage("t", "repo-2", b"v")])
        assert await counts(conn, "repo-2") == (2, 0, 0)


async def test_a_new_row_that_exists_already_writes_nothing(pool: asyncpg.Pool) -> None:
    state = rejected("repo-3", "test")
    async with pool.acquire() as conn:
        await repository.start(conn, state)
        fresh = SagaRow(None, 0, None)
        fresh.absorb(state, None, None)
        with pytest.raises(SagaMovedOn):
            await repository.write(conn, {"repo-3": fresh}, [("repo-3", "-", "test", "lost")],
                                   [OutgoingMessage("t", "repo-3", b"v")])
        assert await counts(conn, "repo-3") == (1, 0, 0)
