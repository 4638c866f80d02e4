"""One example of every external event, built from the models, for
docs/contract.md ("Examples of every external event"). A unit test checks
that the document shows exactly these, so the two cannot drift.

    python -m schemas.examples        # print the section to paste in
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel

from schemas.contract import (
    TOPIC_EVENT_TYPES,
    CancelOrderRequested,
    CheckoutFailed,
    CheckoutRequested,
    CheckoutSucceeded,
    FailureReason,
    LineItem,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderRequestRejected,
    OrderReturned,
    OrderShipped,
    OrderStatusChanged,
    PaymentMethod,
    ReturnInitiated,
    ReturnReceived,
    ReturnRequested,
    ShippingAddress,
)
from schemas.envelope import encode_event, make_event

SESSION = "cs_8f14e45f"
ORDER = "ord_5b2c9e7a"
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
ITEMS = [LineItem(sku="SKU-1", quantity=2, unit_price=1999)]
ADDRESS = ShippingAddress(name="A. Buyer", line1="1 Main St", city="Springfield",
                          postal_code="12345", country="US")
KEYS = {"order_id": ORDER, "checkout_session_id": SESSION}

DATA: dict[str, BaseModel] = {
    "CheckoutRequested": CheckoutRequested(
        checkout_session_id=SESSION, customer_id="cust_42", currency="USD", items=ITEMS,
        promo_code="BF10", payment=PaymentMethod(method="card", token="tok_visa"),
        shipping_address=ADDRESS),
    "CheckoutSucceeded": CheckoutSucceeded(
        checkout_session_id=SESSION, order_id=ORDER, subtotal=3998, discount=399, total=3599,
        currency="USD"),
    "CheckoutFailed": CheckoutFailed(
        checkout_session_id=SESSION, reason=FailureReason.OUT_OF_STOCK,
        detail="SKU-1: 2 wanted, 1 available", skus=["SKU-1"]),
    "OrderConfirmed": OrderConfirmed(
        order_id=ORDER, checkout_session_id=SESSION, customer_id="cust_42", items=ITEMS,
        subtotal=3998, discount=399, total=3599, currency="USD", shipping_address=ADDRESS,
        confirmed_at=AT),
    "CancelOrderRequested": CancelOrderRequested(**KEYS, reason="ordered twice"),
    "ReturnRequested": ReturnRequested(**KEYS, reason="wrong size"),
    "OrderCancelled": OrderCancelled(**KEYS, reason="ordered twice"),
    "OrderShipped": OrderShipped(**KEYS, carrier="UPS", tracking_number="1Z999AA10123456784"),
    "OrderDelivered": OrderDelivered(**KEYS),
    "ReturnInitiated": ReturnInitiated(**KEYS, reason="wrong size"),
    "OrderReturned": OrderReturned(**KEYS),
    "OrderStatusChanged": OrderStatusChanged(**KEYS, from_="CONFIRMED", to="SHIPPED"),
    "OrderRequestRejected": OrderRequestRejected(
        **KEYS, reason="ALREADY_SHIPPED", detail="the order has shipped; request a return"),
    "ReturnReceived": ReturnReceived(**KEYS),
}


def examples() -> dict[str, dict[str, object]]:
    """Every external event type: the whole CloudEvent, as it is on the wire."""
    out = {}
    for n, (name, data) in enumerate(DATA.items(), start=1):
        event = make_event(type=name, source="urn:example:checkout", subject=SESSION, data=data,
                           id=f"00000000-0000-4000-8000-{n:012d}", time=AT)
        out[name] = json.loads(encode_event(event))
    return out


def topics_of(name: str) -> list[str]:
    return [topic for topic, types in TOPIC_EVENT_TYPES.items() if name in types]


def markdown() -> str:
    parts = ["## Examples of every external event\n",
             ("Generated from the models in `schemas/` (`python -m schemas.examples`); a unit "
              "test checks that this section shows exactly what the code builds.\n")]
    for name, event in examples().items():
        where = ", ".join(f"`{t}`" for t in topics_of(name))
        parts.append(f"### {name} (on {where})\n```json\n{json.dumps(event, indent=2)}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown(), end="")
