"""The outbox relay on the real PostgreSQL and Kafka: the fast path publishes
committed rows at once and deletes them once acknowledged; the sweep publishes
rows a writer left behind (a crash between its commit and its publish), in id
order, once they are older than the grace period; a row the broker refuses for
good is quarantined and the rows behind it are published."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator

import asyncpg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from helpers import Bus, uid

from messaging import metrics
from messaging.db import create_pool, messaging_ddl
from messaging.dead_letters import ORIGINAL_SHA256, ORIGINAL_SIZE, TRUNCATED
from messaging.kafka import AsyncProducer
from messaging.message import OutgoingMessage
from messaging.outbox import OutboxRelay, enqueue
from schemas.contract import dlq_topic

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
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (name, dlq_topic(name))]).values():
        fut.result(30)
    return name


def message(topic: str, key: str, value: bytes | None = None) -> OutgoingMessage:
    return OutgoingMessage(topic, key, f"v-{key}".encode() if value is None else value)


async def write(pool: asyncpg.Pool, topic: str, keys: list[str],  # type: ignore[no-untyped-def]
                messages: list[OutgoingMessage] | None = None):
    async with pool.acquire() as conn, conn.transaction():
        return await enqueue(conn, SCHEMA, messages or [message(topic, k) for k in keys])


async def quarantined(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(f"SELECT id, topic, key, value, error FROM {SCHEMA}.outbox_quarantine ORDER BY id")


def counted(schema: str = SCHEMA) -> float:
    return metrics.REGISTRY.get_sample_value("checkout_outbox_quarantined_total", {"schema": schema}) or 0.0


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


# ---- a poison row is quarantined and the relay goes on ------------------------------------


async def test_fast_path_quarantines_a_row_too_large_to_send_and_publishes_the_rest(stack, pool, topic) -> None:  # type: ignore[no-untyped-def]
    """A 1.2 MB row (over the producer's 1,000,000 bytes: produce() refuses it
    at once) between two good ones. On the old code publish() raised
    MSG_SIZE_TOO_LARGE into the writer, after its commit, and the sweep then
    retried the row for ever, holding every row behind it."""
    big = b"B" * 1_200_000
    before = counted()
    async with relay_running(stack.bootstrap, pool, grace=600) as (relay, bus):
        first = await write(pool, topic, [], [message(topic, "a"), message(topic, "big", big),
                                              message(topic, "b")])
        relay.publish(first)  # must not raise
        relay.publish(await write(pool, topic, ["c"]))
        assert await published(bus, topic, 3) == ["a", "b", "c"]
        for _ in range(100):
            if await rows(pool) == 0 and await quarantined(pool):
                break
            await asyncio.sleep(0.05)
        assert await rows(pool) == 0
        [row] = await quarantined(pool)
        assert (row["id"], row["key"], bytes(row["value"])) == (first.ids[1], "big", big)
        assert "MSG_SIZE_TOO_LARGE" in row["error"]
        assert counted() == before + 1
        # A bounded copy in the topic's dead letters, saying where the row is.
        [copy] = [r for r in await asyncio.to_thread(bus.poll, dlq_topic(topic), 3) if r["key"] == "big"]
        assert copy["headers"][TRUNCATED] == "true" and copy["headers"][ORIGINAL_SIZE] == str(len(big))
        assert copy["headers"][ORIGINAL_SHA256] == hashlib.sha256(big).hexdigest()
        assert big.startswith(copy["raw"]) and copy["headers"]["dlq.stage"] == "outbox"
        assert copy["headers"]["dlq.outbox.quarantined"] == f"{SCHEMA}.outbox_quarantine:{first.ids[1]}"
        # And the relay still publishes what comes next.
        relay.publish(await write(pool, topic, ["d"]))
        assert (await published(bus, topic, 4))[-1] == "d"


async def test_sweep_quarantines_a_row_for_a_bad_topic_name_and_publishes_the_rows_behind_it(
        stack, pool, topic) -> None:  # type: ignore[no-untyped-def]
    """Rows left behind by a writer, the second for a topic name the broker
    rejects (TOPIC_EXCEPTION, "Invalid topic"): the sweep publishes the others
    in id order and quarantines that one; its dead-letter copy cannot be sent
    (its .dlq is no valid name either) and the row stays in the quarantine."""
    await write(pool, topic, [], [message(topic, "k1"), message("bad topic!", "k2"),
                                  message(topic, "k3")])
    await write(pool, topic, ["k4"])
    async with relay_running(stack.bootstrap, pool, grace=0.2) as (_relay, bus):
        assert await published(bus, topic, 3) == ["k1", "k3", "k4"]
        for _ in range(100):
            if await rows(pool) == 0:
                break
            await asyncio.sleep(0.05)
        assert await rows(pool) == 0
        [row] = await quarantined(pool)
        assert (row["topic"], row["key"]) == ("bad topic!", "k2")
        assert "TOPIC_EXCEPTION" in row["error"]
