"""The external contract as pydantic models: the `data` of every external event.

Everything here mirrors docs/contract.md, which may only grow: fields
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

from schemas.limits import (
    MAX_ADDRESS_LINE_CHARS,
    MAX_AMOUNT,
    MAX_CARRIER_CHARS,
    MAX_CITY_CHARS,
    MAX_ID_CHARS,
    MAX_ITEMS,
    MAX_NAME_CHARS,
    MAX_PAYMENT_METHOD_CHARS,
    MAX_PAYMENT_TOKEN_CHARS,
    MAX_POSTAL_CODE_CHARS,
    MAX_PROMO_CODE_CHARS,
    MAX_QUANTITY,
    MAX_REASON_CHARS,
    MAX_REGION_CHARS,
    MAX_SESSION_ID_CHARS,
    MAX_SKU_CHARS,
    MAX_STATUS_CHARS,
    MAX_TRACKING_NUMBER_CHARS,
    nul_problem,
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


def is_dlq_topic(topic: str) -> bool:
    return topic.endswith(_DLQ_SUFFIX)


def dlq_source(topic: str) -> str:
    """The topic whose dead letters `topic` (a dead-letter topic) holds."""
    return topic.removesuffix(_DLQ_SUFFIX)


# --- field types ----------------------------------------------------------
# Every bound comes from `schemas.limits`. Text never contains U+0000, which
# PostgreSQL refuses in text and jsonb: a validator says so in a sentence (it
# becomes a CheckoutFailed detail), and a `pattern` says so in the exported
# JSON Schema, where a person cannot be given a sentence.

# `^`/`$` rather than `\A`/`\Z`: pydantic's Rust regex engine and JSON Schema
# (ECMA-262) both treat `$` as end of input, and neither knows `\Z`.
_SESSION_ID_REGEX: Final = rf"^[A-Za-z0-9_.:-]{{1,{MAX_SESSION_ID_CHARS}}}$"

# For code outside pydantic (DLQ headers, recovering a session id from a broken
# event).  `\A...\Z` so `.match()` and `.search()` are as safe as `.fullmatch()`:
# Python's `$` would accept a trailing newline.
SESSION_ID_PATTERN: Final[re.Pattern[str]] = re.compile(
    rf"\A[A-Za-z0-9_.:-]{{1,{MAX_SESSION_ID_CHARS}}}\Z"
)

# The schema-only patterns (ECMA-262 and Python `re` read `\u0000` alike).
NO_NUL_REGEX: Final = r"^[^\u0000]*$"
NON_BLANK_NO_NUL_REGEX: Final = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


def _no_nul(value: str) -> str:
    problem = nul_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NO_NUL = AfterValidator(_no_nul)
_NOT_BLANK = AfterValidator(_not_blank)
NO_NUL_SCHEMA: Final = Field(json_schema_extra={"pattern": NO_NUL_REGEX})
_NOT_BLANK_SCHEMA: Final = Field(json_schema_extra={"pattern": NON_BLANK_NO_NUL_REGEX})


def _length(max_length: int, min_length: int | None = None) -> StringConstraints:
    return StringConstraints(min_length=min_length, max_length=max_length)


# Non-blank sentences we write ourselves (a failure's detail): no U+0000, and
# no length limit, since a detail names what it is about (up to every SKU of a
# cart) and refusing our own answer would leave a checkout unanswered.
NonBlankStr = Annotated[str, StringConstraints(min_length=1), NO_NUL, _NOT_BLANK,
                        _NOT_BLANK_SCHEMA]
SessionId = Annotated[str, StringConstraints(pattern=_SESSION_ID_REGEX)]
OrderId = Annotated[str, _length(MAX_ID_CHARS, 1), NO_NUL, _NOT_BLANK, _NOT_BLANK_SCHEMA]
Sku = Annotated[str, _length(MAX_SKU_CHARS, 1), NO_NUL, _NOT_BLANK, _NOT_BLANK_SCHEMA]
CustomerId = Annotated[str, _length(MAX_ID_CHARS, 1), NO_NUL, NO_NUL_SCHEMA]
PromoCode = Annotated[str, _length(MAX_PROMO_CODE_CHARS, 1), NO_NUL, NO_NUL_SCHEMA]
PaymentMethodName = Annotated[str, _length(MAX_PAYMENT_METHOD_CHARS, 1), NO_NUL, _NOT_BLANK,
                              _NOT_BLANK_SCHEMA]
PaymentToken = Annotated[str, _length(MAX_PAYMENT_TOKEN_CHARS, 1), NO_NUL, _NOT_BLANK,
                         _NOT_BLANK_SCHEMA]
PersonName = Annotated[str, _length(MAX_NAME_CHARS, 1), NO_NUL, _NOT_BLANK, _NOT_BLANK_SCHEMA]
AddressLine = Annotated[str, _length(MAX_ADDRESS_LINE_CHARS, 1), NO_NUL, _NOT_BLANK,
                        _NOT_BLANK_SCHEMA]
OptionalAddressLine = Annotated[str, _length(MAX_ADDRESS_LINE_CHARS), NO_NUL, NO_NUL_SCHEMA]
City = Annotated[str, _length(MAX_CITY_CHARS, 1), NO_NUL, _NOT_BLANK, _NOT_BLANK_SCHEMA]
Region = Annotated[str, _length(MAX_REGION_CHARS), NO_NUL, NO_NUL_SCHEMA]
PostalCode = Annotated[str, _length(MAX_POSTAL_CODE_CHARS, 1), NO_NUL, _NOT_BLANK,
                       _NOT_BLANK_SCHEMA]
# Free text typed by a person (why an order is cancelled or returned).
Reason = Annotated[str, _length(MAX_REASON_CHARS), NO_NUL, NO_NUL_SCHEMA]
Carrier = Annotated[str, _length(MAX_CARRIER_CHARS), NO_NUL, NO_NUL_SCHEMA]
TrackingNumber = Annotated[str, _length(MAX_TRACKING_NUMBER_CHARS), NO_NUL, NO_NUL_SCHEMA]
# An order status, a reason code, a command name: a short word we write.
Code = Annotated[str, _length(MAX_STATUS_CHARS, 1), NO_NUL, _NOT_BLANK, _NOT_BLANK_SCHEMA]
# A SKU a failure names: it came from a request, so no longer than a SKU.
FailedSku = Annotated[str, _length(MAX_SKU_CHARS), NO_NUL, NO_NUL_SCHEMA]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
# Strict: a float (19.99), a bool or a numeric string is a producer bug that
# would otherwise be coerced silently into a wrong amount.
Money = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
Quantity = Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY)]


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


def subtotal(items: list[LineItem]) -> int:
    return sum(item.quantity * item.unit_price for item in items)


def _subtotal_fits(items: list[LineItem]) -> list[LineItem]:
    # Each price fits a bigint, but 100 lines of 1000 units may not: refused
    # here, at intake, rather than by PostgreSQL (or a discount) halfway
    # through the saga.
    total = subtotal(items)
    if total > MAX_AMOUNT:
        raise ValueError(
            f"the cart's subtotal (the sum of quantity x unit_price) is {total}, more than "
            f"the largest amount allowed, {MAX_AMOUNT}"
        )
    return items


Items = Annotated[
    list[LineItem],
    Field(
        min_length=1,
        max_length=MAX_ITEMS,
        description=(
            "Each SKU at most once; the subtotal (the sum of quantity x unit_price) "
            f"is at most {MAX_AMOUNT}, the largest signed 64-bit integer."
        ),
    ),
    AfterValidator(_unique_skus),
    AfterValidator(_subtotal_fits),
]


class PaymentMethod(_Frozen):
    method: PaymentMethodName
    token: PaymentToken


class ShippingAddress(_Frozen):
    name: PersonName
    line1: AddressLine
    line2: OptionalAddressLine | None = None
    city: City
    state: Region | None = None
    postal_code: PostalCode
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
    # Not `Sku`: a failure may have to name a SKU the catalogue rejects.
    skus: list[FailedSku] | None = None


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
    reason: Reason | None = None


class ReturnRequested(_OrderEvent):
    reason: Reason | None = None


class OrderCancelled(_OrderEvent):
    reason: Reason | None = None


class OrderShipped(_OrderEvent):
    carrier: Carrier | None = None
    tracking_number: TrackingNumber | None = None


class OrderDelivered(_OrderEvent):
    pass


class ReturnInitiated(_OrderEvent):
    reason: Reason | None = None


class OrderReturned(_OrderEvent):
    pass


class OrderStatusChanged(_OrderEvent):
    # `from` is a Python keyword: the wire name is `from`, code says `from_`.
    # Split validation/serialization aliases instead of `alias=` so that type
    # checkers without the pydantic plugin still accept `from_=` in __init__.
    model_config = ConfigDict(populate_by_name=True)

    from_: Code = Field(
        validation_alias=AliasChoices("from", "from_"), serialization_alias="from"
    )
    to: Code


class OrderRequestRejected(_OrderEvent):
    reason: Code
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
