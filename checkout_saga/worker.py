"""The consumer loop every worker runs.

Consumes in batches, handles different keys concurrently and the messages of
one key in order, and commits a batch only after every message in it is
handled. The failure policy is explicit and wraps the handler:

- transient trouble (a dropped connection, a deadlock) is retried with capped
  exponential backoff and jitter, without committing, until it succeeds;
- anything else (a poison message, a bug) goes to ``<topic>.dlq`` with the
  original bytes and the error, stack and source offset in headers, and the
  partition moves on.

With a batch handler, the keys of a batch are dealt into a few lanes and each
lane is handled as one unit of work (one database transaction, one commit for
many messages: the commit, not the statement, is what a checkout costs most).
A lane that fails for any reason is rolled back by its handler and handled
again message by message under the policy above, so a poison message or a
lost race costs a retry, never a dead letter for its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from checkout_saga import metrics, tracing
from checkout_saga.errors import is_transient
from checkout_saga.kafka import AsyncProducer, OutgoingMessage
from schemas.contract import dlq_topic

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
# Handles every message of a lane in one unit of work, or raises having changed nothing.
BatchHandler = Callable[[list[Message]], Awaitable[None]]


@dataclass(frozen=True)
class _Dispatch:
    task: asyncio.Task[bool]
    keys: set[Any]
    offsets: dict[tuple[str, int], int]  # next offset per (topic, partition)


def _next_offsets(msgs: list[Message]) -> dict[tuple[str, int], int]:
    offsets: dict[tuple[str, int], int] = {}
    for msg in msgs:
        tp = (msg.topic(), msg.partition())
        offsets[tp] = max(offsets.get(tp, -1), msg.offset() + 1)
    return offsets


def dead_letter(msg: Message, error: BaseException, stage: str = "handle") -> OutgoingMessage:
    key = msg.key()
    stack = "".join(traceback.format_exception(error))[-4000:]
    return OutgoingMessage(
        topic=dlq_topic(msg.topic()),
        key=key.decode("utf-8", "replace") if key else "",
        value=msg.value() or b"",
        headers={
            "dlq.error": f"{type(error).__name__}: {error}"[:2000],
            "dlq.error.class": type(error).__name__,
            "dlq.stage": stage,
            "dlq.stack": stack,
            "dlq.source.topic": msg.topic(),
            "dlq.source.partition": str(msg.partition()),
            "dlq.source.offset": str(msg.offset()),
        },
    )


class ConsumerLoop:
    def __init__(
        self,
        name: str,
        config: dict[str, Any],
        topics: list[str],
        handler: Handler,
        producer: AsyncProducer,
        batch: int = 500,
        key_concurrency: int = 64,
        batch_handler: BatchHandler | None = None,
        batch_topics: frozenset[str] = frozenset(),
        lanes: int = 2,
        inflight_batches: int = 1,
        commit_interval: float = 0.2,
    ) -> None:
        self.name = name
        self._config = config
        self._topics = topics
        # Each message in a span continuing its sender's trace, counted and timed.
        self._handler = tracing.instrument(name, handler)
        self._producer = producer
        self._batch = batch
        self._batch_handler = batch_handler
        self._batch_topics = batch_topics
        self._lanes = max(1, lanes)
        self._limit = asyncio.Semaphore(key_concurrency)
        # librdkafka calls must not overlap: one thread owns the consumer.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{name}")
        self._inflight_batches = max(1, inflight_batches)
        self._commit_interval = commit_interval
        self._consumer: Consumer | None = None
        # Handled but not yet committed: next offset per (topic, partition).
        self._pending: dict[tuple[str, int], int] = {}
        self._committed_at = 0.0
        self.handled = 0
        self.dead_lettered = 0

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer = await self._call(Consumer, self._config)
        await self._call(lambda: self._consumer.subscribe(self._topics, on_revoke=self._on_revoke))  # type: ignore[union-attr]
        # Batches being handled, oldest first. The next batch starts while
        # earlier ones still run (a hop does not wait for its neighbours'
        # commits), unless it shares a key with one of them: then it waits,
        # so the messages of one key are still handled in order.
        inflight: deque[_Dispatch] = deque()
        stalled = False
        try:
            while not stop.is_set():
                # Room first, then fetch: what arrives while the batches in
                # flight run is fetched as one batch, not trickled in small ones.
                running = [d.task for d in inflight if not d.task.done()]
                if len(running) >= self._inflight_batches:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    stalled = stalled or self._settle(inflight)
                    continue
                msgs: list[Message] = await self._call(self._fetch)
                good = [m for m in msgs if not self._is_error(m)]
                if good:
                    keys = {m.key() for m in good}
                    waits = [d.task for d in inflight if not d.task.done() and d.keys & keys]
                    if waits:
                        await asyncio.wait(waits)
                    inflight.append(_Dispatch(
                        asyncio.create_task(self._handle_batch(good, stop)), keys, _next_offsets(good)))
                stalled = stalled or self._settle(inflight)
                if not stalled:
                    await self._commit(force=not good)
        finally:
            if inflight:
                await asyncio.wait([d.task for d in inflight])
                if not stalled:
                    self._settle(inflight)
            pending = self._take_pending()
            if pending:  # the last commit is synchronous: leave nothing to redeliver
                with contextlib.suppress(Exception):
                    await self._call(lambda: self._consumer.commit(offsets=pending, asynchronous=False))  # type: ignore[union-attr]
            await self._call(self._consumer.close)
            self._thread.shutdown(wait=False)

    def _settle(self, inflight: deque[_Dispatch]) -> bool:
        """Make the offsets of finished batches committable, oldest first and
        never past a batch still running. True when a batch gave up (we are
        stopping mid-retry): nothing from it on may be committed."""
        while inflight and inflight[0].task.done():
            dispatch = inflight.popleft()
            if not dispatch.task.result():
                return True
            for tp, offset in dispatch.offsets.items():
                self._pending[tp] = max(self._pending.get(tp, -1), offset)
        return False

    def _take_pending(self, only: set[tuple[str, int]] | None = None) -> list[TopicPartition]:
        """The offsets to commit (of ``only`` those partitions), no longer pending."""
        taken = [(tp, o) for tp, o in list(self._pending.items()) if only is None or tp in only]
        for tp, _ in taken:
            self._pending.pop(tp, None)
        return [TopicPartition(t, p, o) for (t, p), o in taken]

    async def _commit(self, force: bool) -> None:
        """Commit at most every commit_interval (or when idle): each commit is
        a broker request, and a commit that never happens only means a
        redelivery, which the inbox absorbs."""
        now = time.monotonic()
        if not self._pending or (not force and now - self._committed_at < self._commit_interval):
            return
        self._committed_at = now
        offsets = self._take_pending()
        try:
            await self._call(lambda: self._consumer.commit(offsets=offsets, asynchronous=True))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - a failed commit only means a redelivery
            log.warning("%s: commit failed (messages will be redelivered): %s", self.name, exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs in the consumer's thread, inside poll(): hand over what is done.
        offsets = self._take_pending({(tp.topic, tp.partition) for tp in partitions})
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - the new owner redelivers; the inbox absorbs
                log.warning("%s: commit on revoke failed: %s", self.name, exc)

    def _fetch(self) -> list[Message]:
        # consume(n, timeout) waits out the whole timeout unless n messages
        # arrive; poll() returns on the first one, then take what is queued.
        assert self._consumer is not None
        first = self._consumer.poll(0.1)
        if first is None:
            return []
        return [first, *self._consumer.consume(self._batch - 1, 0)]

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        log.warning("%s: consumer error %s", self.name, err)
        return True

    async def _handle_batch(self, msgs: list[Message], stop: asyncio.Event) -> bool:
        """Handle a batch; False when stopping mid-retry (the batch must not be committed)."""
        by_key: OrderedDict[Any, list[Message]] = OrderedDict()
        for i, msg in enumerate(msgs):
            key = msg.key() or ("__nokey__", i)
            by_key.setdefault(key, []).append(msg)
        batched: list[list[Message]] = []
        single: list[list[Message]] = []
        for group in by_key.values():
            lane_ok = self._batch_handler is not None and all(
                m.topic() in self._batch_topics for m in group)
            (batched if lane_ok else single).append(group)
        done = await asyncio.gather(
            *(self._handle_lane(lane, stop) for lane in deal(batched, self._lanes)),
            *(self._handle_key(group, stop) for group in single),
        )
        return all(done)

    async def _handle_lane(self, groups: list[list[Message]], stop: asyncio.Event) -> bool:
        assert self._batch_handler is not None
        msgs = [m for group in groups for m in group]
        try:
            await self._batch_handler(msgs)
            self.handled += len(msgs)
            metrics.LANES.labels(self.name, "committed").inc()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the lane was rolled back: one by one now
            metrics.LANES.labels(self.name, "one_by_one").inc()
            log.info("%s: a lane of %d message(s) failed as a whole (%s: %s); handling them "
                     "one by one", self.name, len(msgs), type(exc).__name__, exc)
        done = await asyncio.gather(*(self._handle_key(group, stop) for group in groups))
        return all(done)

    async def _handle_key(self, group: list[Message], stop: asyncio.Event) -> bool:
        async with self._limit:
            for msg in group:
                if not await self._handle_one(msg, stop):
                    return False
        return True

    async def _handle_one(self, msg: Message, stop: asyncio.Event) -> bool:
        attempt = 0
        while True:
            try:
                await self._handler(msg)
                self.handled += 1
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - policy: retry or dead-letter
                if is_transient(exc) and not stop.is_set():
                    attempt += 1
                    metrics.RETRIES.labels(self.name, msg.topic()).inc()
                    delay = min(5.0, 0.05 * 2 ** min(attempt, 8)) * (0.5 + random.random())
                    log.warning(
                        "%s: transient error at %s[%d]@%d (attempt %d, retry in %.2fs): %s",
                        self.name, msg.topic(), msg.partition(), msg.offset(), attempt, delay, exc,
                    )
                    await asyncio.sleep(delay)
                    continue
                if is_transient(exc):
                    return False
                await self._dead_letter(msg, exc)
                return True

    async def _dead_letter(self, msg: Message, exc: BaseException) -> None:
        log.error(
            "%s: dead-lettering %s[%d]@%d: %s", self.name, msg.topic(), msg.partition(),
            msg.offset(), exc,
        )
        while True:
            try:
                await self._producer.send([dead_letter(msg, exc)])
                self.dead_lettered += 1
                metrics.DEAD_LETTERS.labels(msg.topic(), "handle").inc()
                return
            except Exception as send_exc:  # noqa: BLE001 - never drop a dead letter
                log.warning("%s: dead-letter send failed, retrying: %s", self.name, send_exc)
                await asyncio.sleep(0.5)


def deal(groups: list[list[Message]], lanes: int) -> list[list[list[Message]]]:
    """Deal key groups into at most ``lanes`` lanes of about equal message
    counts; a key's messages stay together and in order."""
    dealt: list[list[list[Message]]] = [[] for _ in range(min(lanes, len(groups)))]
    sizes = [0] * len(dealt)
    for group in sorted(groups, key=len, reverse=True):
        i = sizes.index(min(sizes))
        dealt[i].append(group)
        sizes[i] += len(group)
    return dealt
