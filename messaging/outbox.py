"""The transactional outbox: rows written with the business change, published
after commit by a relay.

The writer hands its committed rows to the relay, which sends them at once
and deletes them once acknowledged. A crash between commit and publish loses
nothing: the relay's sweep publishes rows left behind, and a repeated publish
is absorbed by the consumer's inbox.

A row the broker refuses for good (``MessageRefused``: too large, a bad topic
name) would be retried for ever and, in the sweep, hold every row behind it.
The sweep moves it to ``<schema>.outbox_quarantine`` with the error instead,
sends a bounded copy to the dead letters where it can, and publishes the
rest in order. A row that fails for a passing reason (an outage) stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from messaging import dlq_headers, metrics, tracing
from messaging.dead_letters import fit, minimal
from messaging.errors import KafkaFatalError, MessageRefused, TransientError, is_transient
from messaging.kafka import AsyncProducer
from messaging.message import OutgoingMessage
from schemas.contract import dlq_topic, is_dlq_topic

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


class Publisher(Protocol):
    """What a writer hands its committed outbox rows to: ``OutboxRelay``, or
    ``KeptOutbox`` where nothing may be published."""

    def publish(self, written: Written) -> None: ...

    def wake(self) -> None: ...


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
    and its publish, a failed send) are published in id order and deleted
    once acknowledged, by one relay per schema at a time (an advisory lock),
    every ``idle_poll`` seconds or at once after ``wake``; a row the broker
    refuses for good is quarantined instead. A row published twice (a slow
    fast path overtaken by the sweep) is absorbed by the consumer's inbox.
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
        # A fatal producer error seen by the fast path: the sweep raises it.
        self._fatal: KafkaFatalError | None = None
        self.published = 0

    def wake(self) -> None:
        """Sweep now, whatever the rows' age (a writer that did not keep its ids)."""
        self._wake.set()

    def publish(self, written: Written) -> None:
        """Called right after the commit that wrote ``written``; never raises."""
        if not written.ids:
            return
        if len(written.ids) != len(written.messages):  # cannot happen; the sweep still would publish
            log.error("outbox %s: %d ids for %d messages", self._schema, len(written.ids),
                      len(written.messages))
            self.wake()
            return
        started = time.monotonic()
        acks = self._producer.produce_each(written.messages)
        self._sending.update(written.ids)
        task = asyncio.ensure_future(self._settle(written.ids, acks, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, ids: list[int], acks: list[asyncio.Future[None]], started: float) -> None:
        results = await asyncio.gather(*acks, return_exceptions=True)
        acked = [i for i, r in zip(ids, results, strict=True) if r is None]
        failed = [(i, r) for i, r in zip(ids, results, strict=True) if r is not None]
        if failed:
            # Left to the sweep: at once for a refusal (to be quarantined), after
            # the grace for a passing failure (an outage is not hammered).
            log.warning("outbox %s: %d message(s) not acknowledged, left to the sweep: %s",
                        self._schema, len(failed), failed[0][1])
            self._sending.difference_update(i for i, _ in failed)
            errors = [r for _, r in failed]
            self._fatal = self._fatal or next((e for e in errors if isinstance(e, KafkaFatalError)), None)
            if any(isinstance(e, MessageRefused | KafkaFatalError) for e in errors):
                self.wake()
        if acked:
            self.published += len(acked)
            metrics.observe_outbox(self._schema, [time.monotonic() - started] * len(acked))
            self._acked += acked
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
            if self._fatal is not None:
                raise self._fatal  # the producer is unusable: stop, to be restarted
            # Cleared before the pass, not after: a wake during the pass counts.
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                sent = await self.publish_once(older_than=0.0 if woken else self._grace)
            except KafkaFatalError:
                raise
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any outage
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "outbox %s: publish failed, retrying: %s", self._schema, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            if sent >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_poll)

    async def publish_once(self, older_than: float = 0.0) -> int:
        """Publish up to ``batch`` rows in id order (those at least ``older_than``
        seconds old that the fast path is not sending); returns how many.
        Refused rows are quarantined; if any row failed otherwise, the others'
        progress is kept and a TransientError raised."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_id):
                return 0
            rows = await conn.fetch(
                f"SELECT id, topic, key, value, headers, "
                "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age "
                f"FROM {self._schema}.outbox WHERE created_at <= now() - make_interval(secs => $2) "
                "AND NOT id = ANY($3::bigint[]) ORDER BY id LIMIT $1",
                self._batch, older_than, list(self._sending),
            )
            if not rows:
                return 0
            messages = [OutgoingMessage(r["topic"], r["key"], bytes(r["value"]), json.loads(r["headers"]))
                        for r in rows]
            results = await asyncio.gather(*self._producer.produce_each(messages), return_exceptions=True)
            sent = [r for r, e in zip(rows, results, strict=True) if e is None]
            refused = [(r, m, e) for r, m, e in zip(rows, messages, results, strict=True)
                       if isinstance(e, MessageRefused)]
            if sent:
                await conn.execute(f"DELETE FROM {self._schema}.outbox WHERE id = ANY($1::bigint[])",
                                   [r["id"] for r in sent])
            if refused:
                await self._quarantine(conn, [(r["id"], str(e)) for r, _, e in refused])
        self.published += len(sent)
        metrics.observe_outbox(self._schema, [r["age"] for r in sent])
        for row, message, error in refused:
            await self._dead_letter_copy(row["id"], message, error)
        others = [e for e in results if e is not None and not isinstance(e, MessageRefused)]
        fatal = next((e for e in others if isinstance(e, KafkaFatalError)), None)
        if fatal is not None:
            raise fatal
        if others:
            raise TransientError(f"{len(others)} of {len(rows)} row(s) not sent: {others[0]}")
        return len(sent)

    async def _quarantine(self, conn: asyncpg.Connection, refused: list[tuple[int, str]]) -> None:
        """Move refused rows out of the outbox, each with its error, in the
        sweep's transaction."""
        ids, errors = [i for i, _ in refused], [e for _, e in refused]
        await conn.execute(
            f"WITH moved AS (DELETE FROM {self._schema}.outbox WHERE id = ANY($1::bigint[]) "
            "RETURNING id, topic, key, value, headers, created_at) "
            f"INSERT INTO {self._schema}.outbox_quarantine "
            "(id, topic, key, value, headers, created_at, error) "
            "SELECT m.id, m.topic, m.key, m.value, m.headers, m.created_at, e.error FROM moved m "
            "JOIN unnest($1::bigint[], $2::text[]) AS e(id, error) USING (id) "
            "ON CONFLICT (id) DO NOTHING",
            ids, errors,
        )
        metrics.OUTBOX_QUARANTINED.labels(self._schema).inc(len(ids))
        log.error("outbox %s: %d row(s) refused by the broker, quarantined in %s.outbox_quarantine "
                  "(ids %s): %s", self._schema, len(ids), self._schema, ids[:10], errors[0])

    async def _dead_letter_copy(self, row_id: int, message: OutgoingMessage, error: BaseException) -> None:
        """A bounded copy of a quarantined row to the dead letters, once, if the
        broker takes it (a row for a bad topic name has no usable .dlq either):
        the row itself is kept in the quarantine table whatever happens here."""
        letter = quarantined_letter(self._schema, row_id, message, error,
                                    self._producer.max_message_bytes)
        for attempt in (letter, minimal(letter)):
            try:
                await self._producer.send([attempt])
            except KafkaFatalError:
                raise
            except Exception as exc:  # noqa: BLE001 - the row is safe in the quarantine table
                log.warning("outbox %s: dead-letter copy of quarantined row %d not sent: %s",
                            self._schema, row_id, exc)
                if not isinstance(exc, MessageRefused):
                    return
                continue
            source = attempt.headers.get(dlq_headers.SOURCE_TOPIC, message.topic)
            metrics.DEAD_LETTERS.labels(source, "outbox").inc()
            return


def quarantined_letter(schema: str, row_id: int, message: OutgoingMessage, error: BaseException,
                       limit: int) -> OutgoingMessage:
    """The dead letter of a quarantined outbox row, within ``limit`` bytes. A
    row that was itself a dead letter (its ``.dlq`` topic refused it as it
    was) keeps its own ``dlq.*`` headers; the refusal is added beside them."""
    where = f"{schema}.outbox_quarantine:{row_id}"
    if is_dlq_topic(message.topic):
        headers = {**message.headers, dlq_headers.OUTBOX_ERROR: f"{type(error).__name__}: {error}",
                   dlq_headers.OUTBOX_QUARANTINED: where}
        return fit(dataclasses.replace(message, headers=headers), limit)
    headers = {
        **message.headers,
        dlq_headers.ERROR: f"{type(error).__name__}: {error}",
        dlq_headers.ERROR_CLASS: type(error).__name__,
        dlq_headers.STAGE: "outbox",
        dlq_headers.SOURCE_TOPIC: message.topic,
        dlq_headers.SOURCE_PARTITION: "-1",
        dlq_headers.SOURCE_OFFSET: "-1",
        dlq_headers.OUTBOX_QUARANTINED: where,
    }
    return fit(OutgoingMessage(dlq_topic(message.topic), message.key, message.value, headers), limit)
