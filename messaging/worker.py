"""The consumer loop every worker runs.

Consumes in batches, handles different keys concurrently and the messages of
one key in order, and commits a batch only after every message in it is
handled. The failure policy (retry, dead-letter, stop) wraps the handler:
``messaging/failure_policy.py``.

A batch whose only unfinished work is waiting (a backoff, or a key an earlier
batch still holds) does not take one of the ``inflight_batches`` slots: the
loop fetches and handles what follows, for other keys, meanwhile, up to
``MAX_WAITING_BATCHES`` such batches. That is what lets other messages
succeed past a failing one (and so tells a poison message from an outage);
offsets are still committed only up to the oldest unfinished message.

With a batch handler, the keys of a batch are dealt into a few lanes and each
lane is handled as one unit of work (one database transaction, one commit for
many messages: the commit, not the statement, is what a checkout costs most).
A lane that fails for any reason is rolled back by its handler and handled
again message by message under the policy above, so a poison message or a
lost race costs a retry, never a dead letter for its neighbours.

Stopping: retries and backoffs end at once; a handler still running
``stop_grace`` seconds after the stop is cancelled; batches not finished are
not committed (their messages are redelivered); the final commit and the
consumer's close are bounded too, so a dead broker cannot hold the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from messaging import metrics, tracing
from messaging.dead_letters import dead_letter
from messaging.errors import KafkaFatalError
from messaging.failure_policy import FailurePolicy
from messaging.kafka import AsyncProducer
from messaging.own_thread import OwnThread
from messaging.retry import RetryPolicy

__all__ = ["BatchHandler", "ConsumerLoop", "Handler", "dead_letter", "deal"]

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
# Handles every message of a lane in one unit of work, or raises having changed nothing.
BatchHandler = Callable[[list[Message]], Awaitable[None]]


@dataclass
class _Progress:
    """How much of a batch is still to do, and how much of that is only waiting."""

    left: int = 0  # key groups not finished
    waiting: int = 0  # of those, groups in a backoff or behind an earlier batch

    @property
    def idle(self) -> bool:
        return self.left > 0 and self.waiting >= self.left

    @contextlib.contextmanager
    def wait(self, groups: int = 1) -> Iterator[None]:
        self.waiting += groups
        try:
            yield
        finally:
            self.waiting -= groups


@dataclass(frozen=True)
class _Dispatch:
    task: asyncio.Task[bool]
    keys: set[Any]
    offsets: dict[tuple[str, int], int]  # next offset per (topic, partition)
    progress: _Progress = field(default_factory=_Progress)


def _ended_well(task: asyncio.Task[bool]) -> bool:
    """Done, handled to the end (not cancelled, no error, not given up at stop)."""
    return task.done() and not task.cancelled() and task.exception() is None and task.result()


def _next_offsets(msgs: list[Message]) -> dict[tuple[str, int], int]:
    offsets: dict[tuple[str, int], int] = {}
    for msg in msgs:
        tp = (msg.topic(), msg.partition())
        offsets[tp] = max(offsets.get(tp, -1), msg.offset() + 1)
    return offsets


class ConsumerLoop:
    # Batches that only wait (see the module's docstring) beyond the in-flight
    # slots: during an outage every batch waits, and this bounds what is held.
    MAX_WAITING_BATCHES = 4
    # How often a loop with every slot taken looks again for batches gone idle.
    RECHECK_SECONDS = 0.05

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
        retry: RetryPolicy | None = None,
        stop_grace: float = 3.0,
    ) -> None:
        self.name = name
        self._config = config
        self._topics = topics
        # Each message in a span continuing its sender's trace, counted and timed.
        self._policy = FailurePolicy(name, tracing.instrument(name, handler), producer,
                                     retry or RetryPolicy())
        self._batch = batch
        self._batch_handler = batch_handler
        self._batch_topics = batch_topics
        self._lanes = max(1, lanes)
        self._limit = asyncio.Semaphore(key_concurrency)
        self._thread = OwnThread(f"kafka-{name}")
        self._inflight_batches = max(1, inflight_batches)
        self._commit_interval = commit_interval
        # Handlers still running this long after stop are cancelled; the
        # final commit and the close get as long again.
        self._stop_grace = stop_grace
        self._consumer: Consumer | None = None
        # Handled but not yet committed: next offset per (topic, partition).
        self._pending: dict[tuple[str, int], int] = {}
        self._committed_at = 0.0
        # A batch gave up: from it on nothing is committed (only at stop, or
        # before the loop stops on the batch's error).
        self._stalled = False

    @property
    def handled(self) -> int:
        return self._policy.handled

    @property
    def dead_lettered(self) -> int:
        return self._policy.dead_lettered

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._thread.call(fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer = await self._call(Consumer, self._config)
        await self._call(lambda: self._consumer.subscribe(self._topics, on_revoke=self._on_revoke))  # type: ignore[union-attr]
        # Batches being handled, oldest first. The next batch starts while
        # earlier ones still run (a hop does not wait for its neighbours'
        # commits); messages of a key an earlier batch still holds wait for
        # it inside the new batch, so the messages of one key stay in order.
        inflight: deque[_Dispatch] = deque()
        try:
            while not stop.is_set():
                # Room first, then fetch: what arrives while the batches in
                # flight run is fetched as one batch, not trickled in small ones.
                running = [d for d in inflight if not d.task.done()]
                busy = sum(1 for d in running if not d.progress.idle)
                if busy >= self._inflight_batches or \
                        len(running) >= self._inflight_batches + self.MAX_WAITING_BATCHES:
                    await asyncio.wait([d.task for d in running], timeout=self.RECHECK_SECONDS,
                                       return_when=asyncio.FIRST_COMPLETED)
                    self._settle(inflight)
                    continue
                msgs: list[Message] = await self._call(self._fetch)
                good = [m for m in msgs if not self._is_error(m)]
                if good:
                    keys = {m.key() for m in good}
                    earlier = [d for d in inflight if not d.task.done() and d.keys & keys]
                    progress = _Progress()
                    task = asyncio.create_task(self._handle_batch(good, stop, progress, earlier))
                    inflight.append(_Dispatch(task, keys, _next_offsets(good), progress))
                self._settle(inflight)
                await self._commit(force=not good)
        finally:
            await self._abandon(inflight)
            with contextlib.suppress(Exception):  # raised already, or to be lost in a stop
                self._settle(inflight)
            await self._close()

    async def _abandon(self, inflight: deque[_Dispatch]) -> None:
        """At stop: let the batches in hand end (their retries and backoffs end
        at once) for up to stop_grace, then cancel the rest: not committed."""
        tasks = [d.task for d in inflight if not d.task.done()]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._stop_grace)
        if not late:
            return
        log.warning("%s: %d batch(es) still running %.1fs after stop: cancelled, not committed",
                    self.name, len(late), self._stop_grace)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=1.0)

    async def _close(self) -> None:
        """The last commit (synchronous: leave nothing to redeliver) and the
        close, each bounded: with the broker gone either may never return."""
        pending = self._take_pending()
        consumer = self._consumer
        assert consumer is not None
        steps: list[tuple[str, Callable[[], Any]]] = [("close", consumer.close)]
        if pending:
            steps.insert(0, ("commit", lambda: consumer.commit(offsets=pending, asynchronous=False)))
        until = time.monotonic() + self._stop_grace
        for what, step in steps:
            try:
                await asyncio.wait_for(self._call(step), max(0.01, until - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - stopping: a redelivery is absorbed by the inbox
                log.warning("%s: %s at stop failed: %s", self.name, what, exc or type(exc).__name__)
        self._thread.shutdown()

    def _settle(self, inflight: deque[_Dispatch]) -> bool:
        """Make the offsets of finished batches committable, oldest first and
        never past a batch still running. True once a batch gave up (stopping
        mid-retry, cancelled, or failed: its error is raised, which stops the
        loop): nothing from it on may be committed."""
        while not self._stalled and inflight and inflight[0].task.done():
            dispatch = inflight.popleft()
            task = dispatch.task
            if not _ended_well(task):
                self._stalled = True
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                break
            for tp, offset in dispatch.offsets.items():
                self._pending[tp] = max(self._pending.get(tp, -1), offset)
        return self._stalled

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
        if self._stalled or not self._pending or (not force and now - self._committed_at < self._commit_interval):
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

    async def _handle_batch(self, msgs: list[Message], stop: asyncio.Event, progress: _Progress,
                            earlier: list[_Dispatch]) -> bool:
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
        progress.left = len(by_key)
        done = await asyncio.gather(
            *(self._handle_lane(lane, stop, progress, earlier) for lane in deal(batched, self._lanes)),
            *(self._handle_key(group, stop, progress, earlier) for group in single),
            return_exceptions=True,  # the others end first; then the error stops the loop
        )
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return all(done)

    async def _after_earlier(self, groups: list[list[Message]], progress: _Progress,
                             earlier: list[_Dispatch]) -> bool:
        """Wait until the earlier batches holding these groups' keys are done;
        False when one of them gave up (stopping): these must not go first."""
        keys = {group[0].key() for group in groups}
        before = [d.task for d in earlier if d.keys & keys]
        running = [t for t in before if not t.done()]
        if running:
            with progress.wait(len(groups)):
                await asyncio.wait(running)
        return all(_ended_well(t) for t in before)

    async def _handle_lane(self, groups: list[list[Message]], stop: asyncio.Event,
                           progress: _Progress, earlier: list[_Dispatch]) -> bool:
        assert self._batch_handler is not None
        if not await self._after_earlier(groups, progress, earlier):
            progress.left -= len(groups)
            return False
        msgs = [m for group in groups for m in group]
        try:
            await self._batch_handler(msgs)
            self._policy.succeeded(len(msgs))
            progress.left -= len(groups)
            metrics.LANES.labels(self.name, "committed").inc()
            return True
        except asyncio.CancelledError:
            raise
        except KafkaFatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the lane was rolled back: one by one now
            metrics.LANES.labels(self.name, "one_by_one").inc()
            log.info("%s: a lane of %d message(s) failed as a whole (%s: %s); handling them "
                     "one by one", self.name, len(msgs), type(exc).__name__, exc)
        done = await asyncio.gather(*(self._handle_key(group, stop, progress, []) for group in groups))
        return all(done)

    async def _handle_key(self, group: list[Message], stop: asyncio.Event, progress: _Progress,
                          earlier: list[_Dispatch]) -> bool:
        try:
            if not await self._after_earlier([group], progress, earlier):
                return False
            async with self._limit:
                for msg in group:
                    if not await self._policy.handle(msg, stop, progress.wait):
                        return False
            return True
        finally:
            progress.left -= 1


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
