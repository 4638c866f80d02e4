"""The failure policy the consumer loop wraps around its handler, one message
at a time: retry, dead-letter or stop.

- transient trouble (a dropped connection, a deadlock) is retried with capped
  exponential backoff and jitter, without committing. A message whose
  failures outlast the retry budget while other messages on the same loop
  succeed is dead-lettered as ``RetriesExhausted``; in an outage (nothing
  succeeds) it is retried until the worker stops (``messaging/retry.py``
  says why);
- anything else (a poison message, a bug) goes to ``<topic>.dlq`` with the
  original bytes (a truncated copy when they would not fit the producer's
  limit: ``messaging/dead_letters.py``) and the error, stack and source
  offset in headers, and the partition moves on;
- a dead letter the broker refuses is sent again without its value, and
  dropped (logged, counted) if even that is refused; a dead letter that
  cannot be sent for an outage is retried until the worker stops;
- a fatal Kafka client error is raised: it stops the loop and so the
  process, to be restarted with a fresh client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

from confluent_kafka import Message

from messaging import metrics
from messaging.dead_letters import dead_letter, minimal
from messaging.dlq_headers import TRUNCATED
from messaging.errors import KafkaFatalError, MessageRefused, RetriesExhausted, is_transient
from messaging.kafka import AsyncProducer
from messaging.retry import RetryPolicy

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
# Entered while a message only waits (a backoff): the loop may fetch more meanwhile.
Waiting = Callable[[], AbstractContextManager[None]]


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True if it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


class FailurePolicy:
    def __init__(self, name: str, handler: Handler, producer: AsyncProducer,
                 retry: RetryPolicy) -> None:
        self.name = name
        self._handler = handler
        self._producer = producer
        self._retry = retry
        self.handled = 0
        self.dead_lettered = 0
        # Messages handled successfully, ever, by any path of the loop: a
        # failing message that sees it grow while it waits knows that the
        # infrastructure works (retry.py).
        self.successes = 0

    def succeeded(self, count: int = 1) -> None:
        self.handled += count
        self.successes += count

    async def handle(self, msg: Message, stop: asyncio.Event, waiting: Waiting) -> bool:
        """Handle one message; False when stopping before it was handled (or
        dead-lettered): it must not be committed."""
        failures, first_failure, successes_then = 0, 0.0, -1
        while True:
            try:
                await self._handler(msg)
                self.succeeded()
                return True
            except asyncio.CancelledError:
                raise
            except KafkaFatalError:
                raise  # the client is unusable: stop, to be restarted
            except Exception as exc:  # noqa: BLE001 - policy: retry or dead-letter
                if not is_transient(exc):
                    return await self.dead_letter(msg, exc, "handle", stop)
                if stop.is_set():
                    return False
                now = time.monotonic()
                failures += 1
                first_failure = first_failure or now
                others = successes_then >= 0 and self.successes > successes_then
                if self._retry.give_up(failures, now - first_failure, others):
                    metrics.RETRIES_EXHAUSTED.labels(self.name, msg.topic()).inc()
                    given_up = RetriesExhausted(
                        f"{failures} transient failures over {now - first_failure:.1f}s while "
                        f"other messages succeeded; the last: {type(exc).__name__}: {exc}")
                    given_up.__cause__ = exc
                    return await self.dead_letter(msg, given_up, "retries", stop)
                metrics.RETRIES.labels(self.name, msg.topic()).inc()
                delay = self._retry.delay(failures, random.random())
                log.warning(
                    "%s: transient error at %s[%d]@%d (attempt %d, retry in %.2fs): %s",
                    self.name, msg.topic(), msg.partition(), msg.offset(), failures, delay, exc,
                )
                successes_then = self.successes
                with waiting():
                    if await stopped_within(stop, delay):
                        return False

    async def dead_letter(self, msg: Message, exc: BaseException, stage: str,
                          stop: asyncio.Event) -> bool:
        """Send ``msg``'s dead letter; False when stopping before it was sent
        (the message stays uncommitted)."""
        log.error(
            "%s: dead-lettering %s[%d]@%d: %s", self.name, msg.topic(), msg.partition(),
            msg.offset(), exc,
        )
        letter = dead_letter(msg, exc, stage, limit=self._producer.max_message_bytes)
        shrunk, failures = False, 0
        while True:
            try:
                await self._producer.send([letter])
                self.dead_lettered += 1
                metrics.DEAD_LETTERS.labels(msg.topic(), stage).inc()
                if TRUNCATED in letter.headers:
                    metrics.DEAD_LETTERS_TRUNCATED.labels(msg.topic()).inc()
                return True
            except asyncio.CancelledError:
                raise
            except KafkaFatalError:
                raise
            except MessageRefused as refused:
                if not shrunk:
                    log.warning("%s: dead letter refused (%s); sending it without its value",
                                self.name, refused)
                    letter, shrunk = minimal(letter), True
                    continue
                log.error("%s: dead letter of %s[%d]@%d refused even without its value, "
                          "dropped: %s", self.name, msg.topic(), msg.partition(), msg.offset(),
                          refused)
                metrics.DEAD_LETTERS_LOST.labels(msg.topic()).inc()
                return True
            except Exception as send_exc:  # noqa: BLE001 - transient: the broker is away
                if stop.is_set():
                    return False
                failures += 1
                delay = self._retry.delay(failures, random.random())
                log.warning("%s: dead-letter send failed, retrying in %.2fs: %s", self.name,
                            delay, send_exc)
                if await stopped_within(stop, delay):
                    return False
