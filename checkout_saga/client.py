"""A small cart-side client: publish CheckoutRequested, collect the results.

Used by ``demo`` and ``bench``; it speaks only the external contract, exactly
as the cart service would.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from messaging.settings import Settings
from messaging.topics import CHECKOUT_REQUESTED, CHECKOUT_RESULTS
from schemas.contract import CheckoutRequested
from schemas.envelope import encode_event, make_event

CART_SOURCE = "urn:checkout-saga:demo-cart"


def checkout_request(
    session_id: str,
    items: list[tuple[str, int, int]],
    token: str = "tok_visa",
    promo_code: str | None = None,
    customer_id: str = "cust_demo",
) -> bytes:
    data = CheckoutRequested.model_validate(
        {
            "checkout_session_id": session_id,
            "customer_id": customer_id,
            "currency": "USD",
            "items": [{"sku": s, "quantity": q, "unit_price": p} for s, q, p in items],
            "payment": {"method": "card", "token": token},
            "shipping_address": {"name": "A. Buyer", "line1": "1 Main St", "city": "Springfield",
                                 "postal_code": "12345", "country": "US"},
            **({"promo_code": promo_code} if promo_code else {}),
        }
    )
    event = make_event(type="CheckoutRequested", source=CART_SOURCE, subject=session_id, data=data)
    return encode_event(event)


class Cart:
    def __init__(self, settings: Settings) -> None:
        self._producer = Producer({"bootstrap.servers": settings.kafka, "acks": "all",
                                   "enable.idempotence": True, "linger.ms": 2})
        self._consumer = Consumer({
            "bootstrap.servers": settings.kafka,
            "group.id": f"cart-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": settings.checkout_kafka_session_timeout_ms,
            "heartbeat.interval.ms": settings.checkout_kafka_heartbeat_interval_ms,
            "fetch.wait.max.ms": settings.checkout_kafka_fetch_wait_max_ms,
        })
        md = self._consumer.list_topics(CHECKOUT_RESULTS, timeout=10)
        parts = md.topics[CHECKOUT_RESULTS].partitions
        # Assigned, not subscribed: no group join to wait for. Results are
        # matched by session id, so earlier runs' results are skipped.
        self._consumer.assign([TopicPartition(CHECKOUT_RESULTS, p, 0) for p in parts])

    def send(self, session_id: str, payload: bytes) -> None:
        while True:
            try:
                self._producer.produce(CHECKOUT_REQUESTED, key=session_id.encode(), value=payload)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self) -> None:
        self._producer.flush(30)

    def results(
        self, sessions: Iterable[str], timeout: float, on_result: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Wait for one result per session (first seen wins); returns session -> event."""
        waiting = set(sessions)
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for msg in self._consumer.consume(500, 0.1):
                if msg.error():
                    continue
                event = json.loads(msg.value())
                sid = event.get("subject")
                if sid in waiting:
                    waiting.discard(sid)
                    found[sid] = event
                    if on_result:
                        on_result(event)
        return found

    def close(self) -> None:
        self._producer.flush(10)
        self._consumer.close()
