"""The outbox relay on the real PostgreSQL and Kafka: the fast path publishes
committed rows at once and deletes them once acknowledged; the sweep publishes
rows a writer left behind (a crash between its commit and its publish), in id
order, once they are older than the grace period."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from helpers import Bus, uid

from checkout_saga.db import create_pool, messaging_ddl
from checkout_saga.kafka import AsyncProducer, OutgoingMessage
from checkout_saga.outbox import OutboxRelay, enqueue

SCHEMA = "relaytest"


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 4)
    await p.execute(f"CREATE SCHEMA {SCHEMA}; {messaging_ddl(SCHEMA)}")
    yield p
    await p.close()


@pytest.fixture
def topic(stack) -> str:  # type: ignore[no-untyped-def]
    name = uid("relay")
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    for fut in admin.create_topics([NewTopic(name, 1, 1)]).values():
        fut.result(30)
    return name


async def write(pool: asyncpg.Pool, topic: str, keys: list[str]):  # type: ignore[no-untyped-def]
    async with pool.acquire() as conn, conn.transaction():
        return await enqueue(conn, SCHEMA, [OutgoingMessage(topic, k, f"v-{k}".encode()) for k in keys])


async def rows(pool: asyncpg.Pool) -> int:
    return await pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox")


async def published(bus: Bus, topic: str, want: int, timeout: float = 20.0) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = [r["key"] for r in await asyncio.to_thread(bus.poll, topic, 0.2)]
        if len(got) >= want or asyncio.get_running_loop().time() > deadline:
            return got


@contextlib.asynccontextmanager
async def relay_running(bootstrap: str, pool: asyncpg.Pool, grace: float) -> AsyncIterator[tuple[OutboxRelay, Bus]]:
    """A relay running over the scratch outbox, and an outside reader of the broker."""
    producer = AsyncProducer({"bootstrap.servers": bootstrap, "acks": "all",
                              "enable.idempotence": True, "linger.ms": 2})
    relay = OutboxRelay(pool, SCHEMA, producer, idle_poll=0.1, grace=grace)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    bus = Bus(bootstrap)
    try:
        yield relay, bus
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        producer.close()
        bus.close()


async def test_fast_path_publishes_at_once_and_deletes_the_rows(stack, pool, topic) -> None:  # type: ignore[no-untyped-def]
    # A grace far beyond the test: whatever is published came by the fast path.
    async with relay_running(stack.bootstrap, pool, grace=600) as (relay, bus):
        written = await write(pool, topic, ["a", "b", "c"])
        assert len(written.ids) == 3 and await rows(pool) == 3
        relay.publish(written)
        assert await published(bus, topic, 3) == ["a", "b", "c"]
        for _ in range(100):
            if await rows(pool) == 0:
                break
            await asyncio.sleep(0.05)
        assert await rows(pool) == 0
        assert relay.published == 3


async def test_sweep_publishes_rows_left_behind_after_the_grace(stack, pool, topic) -> None:  # type: ignore[no-untyped-def]
    # Committed, never handed to publish: the writer "died" after its commit.
    await write(pool, topic, ["k1", "k2"])
    await write(pool, topic, ["k3"])
    async with relay_running(stack.bootstrap, pool, grace=1.5) as (_relay, bus):
        # Younger than the grace: the sweep leaves them to their writer's fast path.
        assert await published(bus, topic, 1, timeout=0.5) == []
        assert await rows(pool) == 3
        assert await published(bus, topic, 3) == ["k1", "k2", "k3"]
        assert await rows(pool) == 0


async def test_wake_sweeps_at_once_whatever_the_age(stack, pool, topic) -> None:  # type: ignore[no-untyped-def]
    async with relay_running(stack.bootstrap, pool, grace=600) as (relay, bus):
        await write(pool, topic, ["w1"])
        relay.wake()
        assert await published(bus, topic, 1) == ["w1"]
        assert await rows(pool) == 0
