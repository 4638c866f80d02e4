"""The external contract as pydantic models: the `data` of every external event.

Everything here mirrors /work/shared/contract.md, which may only grow: fields
and types are added, never renamed or dropped.  All models are frozen and
reject unknown fields, so a typo in a producer fails loudly at the edge
instead of being silently ignored deep inside the saga.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

__all__ = [
    "CHECKOUT_REQUESTED",
    "CHECKOUT_RESULTS",
    "EVENT_MODELS",
    "FULFILLMENT_EVENTS",
    "ORDERS_CONFIRMED",
    "ORDERS_EVENTS",
    "ORDERS_REQUESTS",
    "SESSION_ID_PATTERN",
    "TOPIC_EVENT_TYPES",
    "CancelOrderRequested",
    "CheckoutFailed",
    "CheckoutRequested",
    "CheckoutSucceeded",
    "FailureReason",
    "LineItem",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderDelivered",
    "OrderRequestRejected",
    "OrderReturned",
    "OrderShipped",
    "OrderStatusChanged",
    "PaymentMethod",
    "ReturnInitiated",
    "ReturnReceived",
    "ReturnRequested",
    "ShippingAddress",
    "dlq_topic",
]

# --- topics ---------------------------------------------------------------

CHECKOUT_REQUESTED: Final = "checkout.requested"
CHECKOUT_RESULTS: Final = "checkout.results"
ORDERS_CONFIRMED: Final = "orders.confirmed"
ORDERS_REQUESTS: Final = "orders.requests"
ORDERS_EVENTS: Final = "orders.events"
FULFILLMENT_EVENTS: Final = "fulfillment.events"

_DLQ_SUFFIX: Final = ".dlq"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic operators read for `topic`."""
    return topic + _DLQ_SUFFIX


# --- field types ----------------------------------------------------------

# `^`/`$` rather than `\A`/`\Z`: pydantic's Rust regex engine and JSON Schema
# (ECMA-262) both treat `$` as end of input, and neither knows `\Z`.
_SESSION_ID_REGEX: Final = r"^[A-Za-z0-9_.:-]{1,128}$"

# For code outside pydantic (DLQ headers, recovering a session id from a broken
# event).  `\A...\Z` so `.match()` and `.search()` are as safe as `.fullmatch()`:
# Python's `$` would accept a trailing newline.
SESSION_ID_PATTERN: Final[re.Pattern[str]] = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# The pattern only documents the rule in the exported JSON Schema; the
# validator gives a person a readable message instead of a regex.
_NOT_BLANK_SCHEMA: Final = Field(json_schema_extra={"pattern": r"\S"})

NonBlankStr = Annotated[
    str, StringConstraints(min_length=1), AfterValidator(_not_blank), _NOT_BLANK_SCHEMA
]
SessionId = Annotated[str, StringConstraints(pattern=_SESSION_ID_REGEX)]
OrderId = NonBlankStr
Sku = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    AfterValidator(_not_blank),
    _NOT_BLANK_SCHEMA,
]
CustomerId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
PromoCode = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
# Strict: a float (19.99), a bool or a numeric string is a producer bug that
# would otherwise be coerced silently into a wrong amount.
Money = Annotated[StrictInt, Field(ge=0)]
Quantity = Annotated[StrictInt, Field(ge=1, le=1000)]

MAX_ITEMS: Final = 100


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LineItem(_Frozen):
    sku: Sku
    quantity: Quantity
    unit_price: Money


def _unique_skus(items: list[LineItem]) -> list[LineItem]:
    # A repeated SKU would make holds and price checks ambiguous (which line
    # wins?), so the contract forbids it outright.
    seen: set[str] = set()
    for item in items:
        if item.sku in seen:
            raise ValueError(f"SKU {item.sku!r} appears more than once; list each SKU once")
        seen.add(item.sku)
    return items


Items = Annotated[
    list[LineItem],
    Field(min_length=1, max_length=MAX_ITEMS),
    AfterValidator(_unique_skus),
]


class PaymentMethod(_Frozen):
    method: NonBlankStr
    token: NonBlankStr


class ShippingAddress(_Frozen):
    name: NonBlankStr
    line1: NonBlankStr
    line2: str | None = None
    city: NonBlankStr
    state: str | None = None
    postal_code: NonBlankStr
    country: Country


# --- checkout -------------------------------------------------------------


class CheckoutRequested(_Frozen):
    checkout_session_id: SessionId
    customer_id: CustomerId
    currency: Currency
    items: Items
    promo_code: PromoCode | None = None
    payment: PaymentMethod
    shipping_address: ShippingAddress | None = None


class CheckoutSucceeded(_Frozen):
    checkout_session_id: SessionId
    order_id: OrderId
    subtotal: Money
    discount: Money
    total: Money
    currency: Currency


class FailureReason(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    UNKNOWN_SKU = "UNKNOWN_SKU"
    PRICE_CHANGED = "PRICE_CHANGED"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    PROMO_INVALID = "PROMO_INVALID"
    PROMO_EXHAUSTED = "PROMO_EXHAUSTED"
    PAYMENT_DECLINED = "PAYMENT_DECLINED"
    PAYMENT_TIMEOUT = "PAYMENT_TIMEOUT"
    CANCELLED = "CANCELLED"


class CheckoutFailed(_Frozen):
    checkout_session_id: SessionId
    reason: FailureReason
    detail: NonBlankStr
    # Plain strings: a failure may have to name a SKU the catalogue rejects.
    skus: list[str] | None = None


class OrderConfirmed(_Frozen):
    order_id: OrderId
    checkout_session_id: SessionId
    customer_id: CustomerId
    items: Items
    subtotal: Money
    discount: Money
    total: Money
    currency: Currency
    # Defaults to None because events are encoded with exclude_none: a
    # required-but-nullable field would not survive its own round trip.
    shipping_address: ShippingAddress | None = None
    confirmed_at: AwareDatetime


# --- orders ---------------------------------------------------------------


class _OrderEvent(_Frozen):
    order_id: OrderId
    checkout_session_id: SessionId


class CancelOrderRequested(_OrderEvent):
    reason: str | None = None


class ReturnRequested(_OrderEvent):
    reason: str | None = None


class OrderCancelled(_OrderEvent):
    reason: str | None = None


class OrderShipped(_OrderEvent):
    carrier: str | None = None
    tracking_number: str | None = None


class OrderDelivered(_OrderEvent):
    pass


class ReturnInitiated(_OrderEvent):
    reason: str | None = None


class OrderReturned(_OrderEvent):
    pass


class OrderStatusChanged(_OrderEvent):
    # `from` is a Python keyword: the wire name is `from`, code says `from_`.
    # Split validation/serialization aliases instead of `alias=` so that type
    # checkers without the pydantic plugin still accept `from_=` in __init__.
    model_config = ConfigDict(populate_by_name=True)

    from_: NonBlankStr = Field(
        validation_alias=AliasChoices("from", "from_"), serialization_alias="from"
    )
    to: NonBlankStr


class OrderRequestRejected(_OrderEvent):
    reason: NonBlankStr
    detail: NonBlankStr


class ReturnReceived(_OrderEvent):
    pass


# --- registry -------------------------------------------------------------


def _by_name(*models: type[BaseModel]) -> dict[str, type[BaseModel]]:
    # The CloudEvents `type` is the class name, so the two cannot drift apart.
    return {model.__name__: model for model in models}


TOPIC_EVENT_TYPES: Final[dict[str, dict[str, type[BaseModel]]]] = {
    CHECKOUT_REQUESTED: _by_name(CheckoutRequested),
    CHECKOUT_RESULTS: _by_name(CheckoutSucceeded, CheckoutFailed),
    ORDERS_CONFIRMED: _by_name(OrderConfirmed),
    ORDERS_REQUESTS: _by_name(CancelOrderRequested, ReturnRequested),
    ORDERS_EVENTS: _by_name(
        OrderCancelled,
        OrderShipped,
        OrderDelivered,
        ReturnInitiated,
        OrderReturned,
        OrderStatusChanged,
        OrderRequestRejected,
    ),
    FULFILLMENT_EVENTS: _by_name(OrderShipped, OrderDelivered, ReturnReceived),
}

EVENT_MODELS: Final[dict[str, type[BaseModel]]] = {
    name: model for types in TOPIC_EVENT_TYPES.values() for name, model in types.items()
}
