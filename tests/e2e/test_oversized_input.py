"""A 999,000-byte message, as a careless client with default settings sends
it, on every topic the project consumes: the broker takes it (it is under the
1 MB default), so the worker must dead-letter it within its own producer's
limit and move on (issue 14).

Each case then sends a normal checkout, which must succeed: on the old code
the consumer retried the dead-letter send forever and nothing got through.
"""

from __future__ import annotations

import hashlib

import pytest
from confluent_kafka import Producer
from helpers import Bus, checkout_event, cli, uid

from messaging.dead_letters import ORIGINAL_SHA256, ORIGINAL_SIZE, TRUNCATED
from messaging.kafka import DEFAULT_MESSAGE_MAX_BYTES
from messaging.topics import (
    CHECKOUT_REQUESTED,
    FULFILLMENT_EVENTS,
    INVENTORY_COMMANDS,
    ORDERS_COMMANDS,
    ORDERS_REPLIES,
    ORDERS_REQUESTS,
    PAYMENT_COMMANDS,
    PROMOTIONS_COMMANDS,
    SAGA_REPLIES,
)
from schemas.contract import dlq_topic

SIZE = 999_000


def oversized(session_id: str) -> bytes:
    """JSON that names its session but is no event of any kind, padded to SIZE bytes."""
    head = b'{"subject": "' + session_id.encode() + b'", "pad": "'
    tail = b'"}'
    return head + b"x" * (SIZE - len(head) - len(tail)) + tail


def send_plain(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    """As a careless client would: a confluent-kafka producer with default settings."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def dead_letter_of(bus: Bus, topic: str, key: str, timeout: float = 60.0) -> dict:  # type: ignore[type-arg]
    import time

    end = time.monotonic() + timeout
    while True:
        found = [r for r in bus.poll(dlq_topic(topic), 0.3) if r["key"] == key]
        if found or time.monotonic() > end:
            assert found, f"no dead letter for {key} on {dlq_topic(topic)} within {timeout}s"
            return found[0]


def assert_bounded_copy(letter: dict, original: bytes, topic: str) -> None:  # type: ignore[type-arg]
    headers, raw = letter["headers"], letter["raw"]
    assert headers[TRUNCATED] == "true"
    assert headers[ORIGINAL_SIZE] == str(len(original))
    assert headers[ORIGINAL_SHA256] == hashlib.sha256(original).hexdigest()
    assert original.startswith(raw) and 0 < len(raw) < len(original)
    assert headers["dlq.source.topic"] == topic
    wire = len(raw) + len(letter["key"] or "") + sum(len(k) + len(v) for k, v in headers.items())
    assert wire <= DEFAULT_MESSAGE_MAX_BYTES


def assert_checkout_succeeds(env: dict[str, str], bus: Bus) -> None:
    sku, sid = uid("SKU-BIG"), uid("after-big")
    cli(env, "stock", "set", sku, "--price", "100", "--quantity", "5")
    bus.send(CHECKOUT_REQUESTED, sid, checkout_event(sid, [(sku, 1, 100)]))
    bus.flush()
    assert bus.result(sid, timeout=60)["type"] == "CheckoutSucceeded"


def test_oversized_checkout_request_is_answered_dead_lettered_and_the_next_succeeds(
        workers, bus: Bus, env) -> None:
    sid = uid("big")
    value = oversized(sid)
    send_plain(workers.stack.bootstrap, CHECKOUT_REQUESTED, sid, value)

    assert_checkout_succeeds(env, bus)
    assert bus.result(sid)["data"]["reason"] == "INVALID_REQUEST"
    letter = dead_letter_of(bus, CHECKOUT_REQUESTED, sid)
    assert_bounded_copy(letter, value, CHECKOUT_REQUESTED)
    assert letter["headers"]["dlq.stage"] == "parse"


@pytest.mark.parametrize("topic", [
    INVENTORY_COMMANDS, PAYMENT_COMMANDS, ORDERS_COMMANDS, PROMOTIONS_COMMANDS, SAGA_REPLIES,
    ORDERS_REQUESTS, FULFILLMENT_EVENTS, ORDERS_REPLIES,
])
def test_oversized_message_on_a_consumed_topic_is_dead_lettered_and_the_next_checkout_succeeds(
        workers, bus: Bus, env, topic: str) -> None:
    sid = uid("big")
    value = oversized(sid)
    send_plain(workers.stack.bootstrap, topic, sid, value)

    letter = dead_letter_of(bus, topic, sid)
    assert_bounded_copy(letter, value, topic)
    assert_checkout_succeeds(env, bus)
