"""Read a whole topic from the beginning, as an outside client would.

Used by ``verify`` (every ``OrderConfirmed`` ever published) and ``dlq``
(every dead letter). A fresh consumer is *assigned* every partition at offset
0: no group join, no committed offsets touched.

Where a partition ends: at its high watermark when the read began. On tansu,
the fallback broker, the watermark runs short when the last batch held several
records, so there callers pass ``idle``: reading goes on until nothing new
arrived for that many seconds too (0 on Apache Kafka: ``Settings.
checkout_kafka_exact_watermarks``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from messaging.errors import CheckoutSagaError
from messaging.settings import Settings


class TopicUnavailable(CheckoutSagaError, RuntimeError):
    """The topic does not exist or the broker did not answer."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: bytes
    headers: dict[str, str]


def _text(raw: str | bytes | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return raw.decode("utf-8", "replace")


def _record(msg: Message) -> Record:
    value = msg.value()
    return Record(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        timestamp_ms=msg.timestamp()[1],
        key=_text(msg.key()),
        value=value.encode() if isinstance(value, str) else (value or b""),
        headers={h[0]: _text(h[1]) or "" for h in (msg.headers() or [])},
    )


def partitions_of(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        raise TopicUnavailable(f"{topic}: {exc}") from exc
    if meta is None or meta.error is not None or not meta.partitions:
        raise TopicUnavailable(f"topic {topic} does not exist")
    return sorted(meta.partitions)


def idle_after_end(settings: Settings, idle: float) -> float:
    """How long a read waits, once at the watermarks, for nothing new to arrive: `idle`
    where the watermarks run short (tansu), none where they are exact (Apache Kafka)."""
    return 0.0 if settings.checkout_kafka_exact_watermarks else idle


# A partition of a topic created a moment ago may have no leader yet (Apache
# Kafka answers NOT_LEADER_OR_FOLLOWER until its election is done): ask again.
_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART})


def _end_offset(consumer: Consumer, partition: TopicPartition, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(partition, timeout=timeout)[1])
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise TopicUnavailable(f"{partition.topic}[{partition.partition}]: {exc}") from exc
            time.sleep(0.1)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    idle: float = 0.5,
    timeout: float = 120.0,
    extra: dict[str, Any] | None = None,
) -> list[Record]:
    """Every record of ``topic``, in partition then offset order."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "checkout-saga.reader",  # never joined nor committed: assign() only
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 10,
        **(extra or {}),
    })
    try:
        parts = partitions_of(consumer, topic)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        ends = {p: _end_offset(consumer, TopicPartition(topic, p)) for p in parts}
        next_offset = {p: 0 for p in parts}
        out: list[Record] = []
        last_seen = time.monotonic()
        deadline = last_seen + timeout
        while time.monotonic() < deadline:
            got = [m for m in consumer.consume(1000, 0.05) if m.error() is None]
            now = time.monotonic()
            for msg in got:
                record = _record(msg)
                out.append(record)
                next_offset[record.partition] = record.offset + 1
            if got:
                last_seen = now
            elif all(next_offset[p] >= ends[p] for p in parts) and now - last_seen >= idle:
                break
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        consumer.close()
