"""The transactional outbox: rows written with the business change, published
after commit by a relay.

The writer hands its committed rows to the relay, which sends them at once
and deletes them once acknowledged. A crash between commit and publish loses
nothing: the relay's sweep publishes rows left behind, and a repeated publish
is absorbed by the consumer's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field

import asyncpg

from checkout_saga import metrics, tracing
from checkout_saga.errors import is_transient
from checkout_saga.kafka import AsyncProducer, OutgoingMessage

log = logging.getLogger(__name__)


def insert_sql(schema: str, first_param: int = 1, where: str = "") -> str:
    """One INSERT for a whole list of messages (four array parameters),
    returning the new rows' ids (for ``OutboxRelay.publish``)."""
    a, b, c, d = (f"${first_param + i}" for i in range(4))
    return (
        f"INSERT INTO {schema}.outbox (topic, key, value, headers) "
        f"SELECT t, k, v, h::jsonb FROM unnest({a}::text[], {b}::text[], {c}::bytea[], {d}::text[]) "
        f"AS m(t, k, v, h) {'WHERE ' + where if where else ''} RETURNING id"
    )


def insert_args(messages: Iterable[OutgoingMessage]) -> list[list[object]]:
    msgs = list(messages)
    metrics.count_dead_letters(msgs)
    return [
        [m.topic for m in msgs],
        [m.key for m in msgs],
        [m.value for m in msgs],
        # As stamped by `traced` when the message was made: the row holds what
        # the fast path sends.
        [json.dumps(m.headers) for m in msgs],
    ]


@dataclass
class Written:
    """Outbox rows a transaction wrote: handed to ``OutboxRelay.publish`` after
    the commit (the messages as written, so the relay need not read them back)."""

    ids: list[int] = field(default_factory=list)
    messages: list[OutgoingMessage] = field(default_factory=list)

    def add(self, other: Written) -> Written:
        self.ids += other.ids
        self.messages += other.messages
        return self


def traced(message: OutgoingMessage) -> OutgoingMessage:
    """The message with the current span's traceparent, taken now (a lane
    writes its outbox rows after the last message's span has ended)."""
    return dataclasses.replace(message, headers=tracing.inject(message.headers))


async def enqueue(conn: asyncpg.Connection, schema: str, messages: Iterable[OutgoingMessage]) -> Written:
    # Stamped now, so the row and the fast path carry the same traceparent.
    msgs = [traced(m) for m in messages]
    if not msgs:
        return Written()
    rows = await conn.fetch(insert_sql(schema), *insert_args(msgs))
    return Written([r["id"] for r in rows], msgs)


class KeptOutbox:
    """Stands in for a relay where nothing may be published (a bench's or a
    test's scratch database): the rows stay in the outbox to be read."""

    def publish(self, written: Written) -> None:
        assert len(written.ids) == len(written.messages)

    def wake(self) -> None:
        return None


class OutboxRelay:
    """Publishes a schema's outbox.

    The fast path: a writer hands its committed rows to ``publish``, which
    produces them at once (in commit order, so a key's messages keep their
    order) and deletes the rows once the broker has acknowledged them all.
    The sweep: rows older than ``grace`` (a writer that died between its commit
    and its publish, a failed send) are deleted and published in id order by
    one relay per schema at a time (an advisory lock), every ``idle_poll``
    seconds or at once after ``wake``. A row published twice (a slow fast path
    overtaken by the sweep) is absorbed by the consumer's inbox.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        producer: AsyncProducer,
        batch: int = 500,
        idle_poll: float = 0.5,
        grace: float = 3.0,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._producer = producer
        self._batch = batch
        self._idle_poll = idle_poll
        self._grace = grace
        self._wake = asyncio.Event()
        self._lock_id = zlib.crc32(f"outbox:{schema}".encode())
        # Published by the fast path, waiting for their acks or their deletion.
        self._sending: set[int] = set()
        self._acked: list[int] = []
        self._acked_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0

    def wake(self) -> None:
        """Sweep now, whatever the rows' age (a writer that did not keep its ids)."""
        self._wake.set()

    def publish(self, written: Written) -> None:
        """Called right after the commit that wrote ``written``."""
        if not written.ids:
            return
        if len(written.ids) != len(written.messages):  # cannot happen; the sweep still would publish
            log.error("outbox %s: %d ids for %d messages", self._schema, len(written.ids),
                      len(written.messages))
            self.wake()
            return
        started = time.monotonic()
        acks = self._producer.produce(written.messages)
        self._sending.update(written.ids)
        task = asyncio.ensure_future(self._settle(written.ids, acks, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, ids: list[int], acks: Awaitable[None], started: float) -> None:
        try:
            await acks
        except Exception as exc:  # noqa: BLE001 - the rows stay; the sweep publishes them
            log.warning("outbox %s: %d message(s) not acknowledged, left to the sweep: %s",
                        self._schema, len(ids), exc)
            self._sending.difference_update(ids)
            return
        self.published += len(ids)
        metrics.observe_outbox(self._schema, [time.monotonic() - started] * len(ids))
        self._acked += ids
        self._acked_event.set()

    async def run(self, stop: asyncio.Event) -> None:
        deleting = asyncio.create_task(self._delete_acked(stop))
        try:
            await self._sweep(stop)
        finally:
            await deleting

    async def _delete_acked(self, stop: asyncio.Event) -> None:
        """Delete published rows in batches: off the hot path, and a deletion
        lost in a crash only means the sweep publishes those rows again."""
        while True:
            if not self._acked:
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acked_event.wait(), self._idle_poll)
                self._acked_event.clear()
                await asyncio.sleep(0.02)  # let a few more acks join the batch
            ids, self._acked = self._acked, []
            if not ids:
                continue
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(f"DELETE FROM {self._schema}.outbox WHERE id = ANY($1::bigint[])", ids)
            except Exception as exc:  # noqa: BLE001 - the rows are published already
                if stop.is_set():  # left to the sweep of whoever runs next
                    log.warning("outbox %s: %d published row(s) not deleted: %s", self._schema, len(ids), exc)
                    return
                self._acked = ids + self._acked
                log.warning("outbox %s: deleting published rows failed, retrying: %s", self._schema, exc)
                await asyncio.sleep(0.5)
                continue
            self._sending.difference_update(ids)

    async def _sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the pass, not after: a wake during the pass counts.
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                sent = await self.publish_once(older_than=0.0 if woken else self._grace)
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any outage
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "outbox %s: publish failed, retrying: %s", self._schema, exc)
                await asyncio.sleep(0.5)
                continue
            if sent >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll)

    async def publish_once(self, older_than: float = 0.0) -> int:
        """Publish up to ``batch`` rows in id order (those at least ``older_than``
        seconds old that the fast path is not sending); returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_id):
                return 0
            # Deleted and published in one transaction: if the publish fails,
            # the rollback puts the rows back for the next pass.
            rows = await conn.fetch(
                f"DELETE FROM {self._schema}.outbox WHERE id IN (SELECT id FROM {self._schema}.outbox "
                "WHERE created_at <= now() - make_interval(secs => $2) AND NOT id = ANY($3::bigint[]) "
                "ORDER BY id LIMIT $1) RETURNING id, topic, key, value, headers, "
                "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age",
                self._batch, older_than, list(self._sending),
            )
            if not rows:
                return 0
            rows = sorted(rows, key=lambda r: r["id"])
            await self._producer.send(
                OutgoingMessage(r["topic"], r["key"], bytes(r["value"]), json.loads(r["headers"]))
                for r in rows
            )
            self.published += len(rows)
            metrics.observe_outbox(self._schema, [r["age"] for r in rows])
            return len(rows)
