"""The transactional outbox: rows written with the business change, published
after commit by a relay.

A crash between commit and publish loses nothing: the relay publishes the row
on its next pass, and a repeated publish is absorbed by the consumer's inbox.
One relay per schema publishes at a time (an advisory lock), in id order, so
the messages of one key leave in the order they were committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Iterable

import asyncpg

from checkout_saga import metrics, tracing
from checkout_saga.errors import is_transient
from checkout_saga.kafka import AsyncProducer, OutgoingMessage

log = logging.getLogger(__name__)


def insert_sql(schema: str, first_param: int = 1) -> str:
    """One INSERT for a whole list of messages (four array parameters)."""
    a, b, c, d = (f"${first_param + i}" for i in range(4))
    return (
        f"INSERT INTO {schema}.outbox (topic, key, value, headers) "
        f"SELECT t, k, v, h::jsonb FROM unnest({a}::text[], {b}::text[], {c}::bytea[], {d}::text[]) "
        "AS m(t, k, v, h)"
    )


def insert_args(messages: Iterable[OutgoingMessage]) -> list[list[object]]:
    msgs = list(messages)
    metrics.count_dead_letters(msgs)
    return [
        [m.topic for m in msgs],
        [m.key for m in msgs],
        [m.value for m in msgs],
        # The span in hand travels with every message (W3C traceparent header).
        [json.dumps(tracing.inject(m.headers)) for m in msgs],
    ]


async def enqueue(conn: asyncpg.Connection, schema: str, messages: Iterable[OutgoingMessage]) -> None:
    args = insert_args(messages)
    if args[0]:
        await conn.execute(insert_sql(schema), *args)


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: AsyncProducer,
        batch: int = 500,
        idle_poll: float = 0.1,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._producer = producer
        self._batch = batch
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._lock_id = zlib.crc32(f"outbox:{schema}".encode())
        self.published = 0

    def wake(self) -> None:
        """Called after a commit that wrote outbox rows: publish without waiting."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.publish_once()
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any outage
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "outbox %s: publish failed, retrying: %s", self._schema, exc)
                await asyncio.sleep(0.5)
                continue
            if sent >= self._batch:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._idle_poll)
            except TimeoutError:
                pass

    async def publish_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_id):
                return 0
            # Deleted and published in one transaction: if the publish fails,
            # the rollback puts the rows back for the next pass.
            rows = await conn.fetch(
                f"DELETE FROM {self._schema}.outbox WHERE id IN (SELECT id FROM {self._schema}.outbox "
                "ORDER BY id LIMIT $1) RETURNING id, topic, key, value, headers, "
                "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age",
                self._batch,
            )
            if not rows:
                metrics.observe_outbox(self._schema, ())
                return 0
            rows = sorted(rows, key=lambda r: r["id"])
            await self._producer.send(
                OutgoingMessage(r["topic"], r["key"], bytes(r["value"]), json.loads(r["headers"]))
                for r in rows
            )
            self.published += len(rows)
            metrics.observe_outbox(self._schema, [r["age"] for r in rows])
            return len(rows)
