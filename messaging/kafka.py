"""Thin adapters over confluent-kafka: client settings, topic creation and an
asyncio-friendly producer.

The client settings suit Apache Kafka (see docs/architecture.md): fetches
long-poll (the broker answers as soon as data arrives, so fetch.wait.max.ms
only bounds an idle fetch), and the classic group protocol with a 6 s session
(the broker's default minimum) and a 2 s heartbeat. The embedded tansu
fallback needs other values, which the stack supplies
(``EmbeddedStack.client_settings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from messaging.errors import KafkaFatalError, MessageRefused, TransientError, kafka_error
from messaging.message import OutgoingMessage
from messaging.settings import Settings

log = logging.getLogger(__name__)

# librdkafka's own default of message.max.bytes, and our setting's.
DEFAULT_MESSAGE_MAX_BYTES: int = Settings.model_fields["checkout_kafka_message_max_bytes"].default


def consumer_config(settings: Settings, group: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": settings.checkout_kafka_fetch_wait_max_ms,
        "fetch.min.bytes": settings.checkout_kafka_fetch_min_bytes,
        "enable.partition.eof": False,
    }
    if settings.checkout_kafka_group_protocol == "consumer":
        # KIP-848: the broker assigns, and owns the session and heartbeat timings.
        config["group.protocol"] = "consumer"
    else:
        config |= {
            "session.timeout.ms": settings.checkout_kafka_session_timeout_ms,
            "heartbeat.interval.ms": settings.checkout_kafka_heartbeat_interval_ms,
            "partition.assignment.strategy": "range",
        }
    return config


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.checkout_kafka_linger_ms,
        "compression.type": "lz4",
        "message.max.bytes": settings.checkout_kafka_message_max_bytes,
    }


def ensure_topics(settings: Settings, topics: Iterable[str], timeout: float = 30.0) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [t for t in dict.fromkeys(topics) if t not in existing]
    if not wanted:
        return
    futures = admin.create_topics(
        [
            NewTopic(t, settings.checkout_partitions, settings.checkout_replication_factor)
            for t in wanted
        ],
        operation_timeout=timeout,
    )
    for topic, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created topics %s", ", ".join(wanted))


class AsyncProducer:
    """One idempotent producer per process. ``produce`` hands messages to
    librdkafka at once and returns an awaitable of their acks; ``send`` awaits
    them. A thread serves the delivery callbacks, so nothing waits for a flush.

    Nothing here raises at the call: every failure, whether ``produce()``
    refused the message at once (too large, a full queue) or the broker did
    later, fails that message's future with one of our classified errors
    (``messaging.errors.kafka_error``)."""

    # How long one produce call may wait, in all, for room in a full queue
    # (it runs on the event loop): after that the rest fail as transient.
    QUEUE_WAIT_SECONDS = 0.5

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(config))
        # What produce() accepts: dead letters are cut to fit it.
        self.max_message_bytes = int(config.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))
        self._closed = False
        # Filled by delivery callbacks (in whichever thread polls), drained by _hand_over.
        self._acks: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], KafkaError | None]] = deque()
        self._poller = threading.Thread(target=self._serve_callbacks, name="kafka-producer", daemon=True)
        self._poller.start()

    def _serve_callbacks(self) -> None:
        while not self._closed:
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the acks this poll collected to their event loops: one wake-up
        per loop and poll rather than one per message."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], KafkaError | None]]] = {}
        while self._acks:
            loop, fut, err = self._acks.popleft()
            by_loop.setdefault(loop, []).append((fut, err))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_settle, settled)

    def warm_up(self, timeout: float = 10.0) -> None:
        # The first idempotent send waits for a producer id: pay that at start.
        self._producer.list_topics(timeout=timeout)

    async def send(self, messages: Iterable[OutgoingMessage]) -> None:
        await self.produce(messages)

    def produce(self, messages: Iterable[OutgoingMessage]) -> Awaitable[None]:
        """Produce now, in order; the result completes when every message is
        acknowledged, else raises: KafkaFatalError, TransientError if any
        failure may pass, MessageRefused if every failure is a refusal."""
        return _all_acked(self.produce_each(messages))

    def produce_each(self, messages: Iterable[OutgoingMessage]) -> list[asyncio.Future[None]]:
        """Produce now, in order; one future per message, done when it is
        acknowledged or failed with a classified error."""
        loop = asyncio.get_running_loop()
        queue_wait_until = time.monotonic() + self.QUEUE_WAIT_SECONDS
        futures: list[asyncio.Future[None]] = []
        for msg in messages:
            fut: asyncio.Future[None] = loop.create_future()
            futures.append(fut)
            self._produce(loop, fut, msg, queue_wait_until)
        return futures

    def _produce(
        self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], msg: OutgoingMessage,
        queue_wait_until: float,
    ) -> None:
        def delivered(err: KafkaError | None, _m: Any) -> None:
            self._acks.append((loop, fut, err))

        while True:
            try:
                self._producer.produce(
                    msg.topic,
                    value=msg.value,
                    key=msg.key.encode(),
                    headers=[(k, v.encode()) for k, v in msg.headers.items()],
                    on_delivery=delivered,
                )
                return
            except BufferError:
                # The queue is full (a slow or absent broker): wait a little
                # for acks to make room, never long (this is the event loop).
                if time.monotonic() >= queue_wait_until:
                    fut.set_exception(TransientError("the producer's queue is full"))
                    return
                self._producer.poll(0.05)
            except KafkaException as exc:  # refused at once: too large, invalid, fatal
                fut.set_exception(kafka_error(exc.args[0]))
                return

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then give up
        on the rest (their senders see a transient failure; an outbox row
        stays, a consumed message stays uncommitted)."""
        if self._closed:
            return
        self._closed = True
        self._poller.join()
        left = self._producer.flush(timeout)
        if left:
            log.warning("producer closed with %d message(s) undelivered", left)
            self._producer.purge()
            self._producer.poll(0)  # their callbacks: failed (purged)
        self._hand_over()


def _settle(settled: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for fut, err in settled:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(kafka_error(err))


async def _all_acked(futures: list[asyncio.Future[None]]) -> None:
    if not futures:
        return
    results = await asyncio.gather(*futures, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if not errors:
        return
    fatal = [e for e in errors if isinstance(e, KafkaFatalError)]
    if fatal:
        raise fatal[0]
    summary = f"{len(errors)} of {len(futures)} sends failed: {errors[0]}"
    if all(isinstance(e, MessageRefused) for e in errors):
        raise MessageRefused(summary) from errors[0]
    raise TransientError(summary) from errors[0]
