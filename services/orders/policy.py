"""What an order does with each request and fulfillment event: a pure table.

``judge(event type, status)`` gives either an ``Accept`` (the legal chain of
moves, and whether money and stock must go back) or a ``Reject`` with a reason
code and a sentence a person can read. Nothing here touches a database: the
handler applies an ``Accept`` with guarded moves and, when it loses a race,
re-reads the order and asks again.

    event                 accepted from      moves to          then
    CancelOrderRequested  CONFIRMED          CANCELLING        refund/void + restock -> CANCELLED
    ReturnRequested       DELIVERED          RETURN_INITIATED
    OrderShipped          CONFIRMED          SHIPPED
    OrderDelivered        SHIPPED            DELIVERED
    ReturnReceived        RETURN_INITIATED   RETURNED          refund + restock

Everything else is refused and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from schemas.contract import (
    CancelOrderRequested,
    OrderDelivered,
    OrderShipped,
    ReturnInitiated,
    ReturnReceived,
    ReturnRequested,
)
from services.orders.lifecycle import OrderStatus, can_move

S = OrderStatus


class Settle(StrEnum):
    """Why money and stock go back: the order was cancelled, or returned."""

    CANCEL = "CANCEL"
    RETURN = "RETURN"


class RejectReason(StrEnum):
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    NOT_CONFIRMED = "NOT_CONFIRMED"
    ALREADY_SHIPPED = "ALREADY_SHIPPED"
    ORDER_CANCELLED = "ORDER_CANCELLED"
    NOT_SHIPPED = "NOT_SHIPPED"
    ALREADY_DELIVERED = "ALREADY_DELIVERED"
    NOT_DELIVERED = "NOT_DELIVERED"
    RETURN_ALREADY_REQUESTED = "RETURN_ALREADY_REQUESTED"
    RETURN_NOT_REQUESTED = "RETURN_NOT_REQUESTED"
    ALREADY_RETURNED = "ALREADY_RETURNED"


@dataclass(frozen=True)
class Accept:
    path: tuple[OrderStatus, ...]
    settle: Settle | None = None


@dataclass(frozen=True)
class Reject:
    reason: RejectReason
    detail: str


Verdict = Accept | Reject


@dataclass(frozen=True)
class Rule:
    """One event type: the single status it moves on from, and why it refuses the rest."""

    accept_from: OrderStatus
    to: OrderStatus
    settle: Settle | None
    # (statuses, reason, what to tell a person); the first group holding the status wins.
    refusals: tuple[tuple[frozenset[OrderStatus], RejectReason, str], ...]


IN_CHECKOUT = frozenset({S.PENDING, S.PAYMENT_AUTHORIZED, S.PAYMENT_FAILED})
CANCELLED = frozenset({S.CANCELLING, S.CANCELLED})
AFTER_SHIPMENT = frozenset({S.SHIPPED, S.DELIVERED, S.RETURN_INITIATED, S.RETURNED})
AFTER_DELIVERY = frozenset({S.DELIVERED, S.RETURN_INITIATED, S.RETURNED})
RETURNING = frozenset({S.RETURN_INITIATED, S.RETURNED})

_CANCELLED = (CANCELLED, RejectReason.ORDER_CANCELLED, "the order is cancelled")

RULES: Mapping[type[BaseModel], Rule] = {
    CancelOrderRequested: Rule(S.CONFIRMED, S.CANCELLING, Settle.CANCEL, (
        (IN_CHECKOUT, RejectReason.NOT_CONFIRMED,
         "its checkout is still running; a cancel is possible once it is confirmed"),
        (CANCELLED, RejectReason.ORDER_CANCELLED, "the order is already cancelled"),
        (AFTER_SHIPMENT, RejectReason.ALREADY_SHIPPED,
         ("the order has shipped and can no longer be cancelled; ask for a return once it "
          "is delivered")),
    )),
    ReturnRequested: Rule(S.DELIVERED, S.RETURN_INITIATED, None, (
        (RETURNING, RejectReason.RETURN_ALREADY_REQUESTED, "a return is already under way"),
        _CANCELLED,
        (IN_CHECKOUT | {S.CONFIRMED, S.SHIPPED},
         RejectReason.NOT_DELIVERED, "a return is possible only once the order is delivered"),
    )),
    OrderShipped: Rule(S.CONFIRMED, S.SHIPPED, None, (
        (AFTER_SHIPMENT, RejectReason.ALREADY_SHIPPED, "the order has already shipped"),
        _CANCELLED,
        (IN_CHECKOUT, RejectReason.NOT_CONFIRMED, "the order is not confirmed yet"),
    )),
    OrderDelivered: Rule(S.SHIPPED, S.DELIVERED, None, (
        (AFTER_DELIVERY, RejectReason.ALREADY_DELIVERED, "the order was already delivered"),
        _CANCELLED,
        (IN_CHECKOUT | {S.CONFIRMED}, RejectReason.NOT_SHIPPED, "the order has not shipped"),
    )),
    ReturnReceived: Rule(S.RETURN_INITIATED, S.RETURNED, Settle.RETURN, (
        (frozenset({S.RETURNED}), RejectReason.ALREADY_RETURNED,
         "the return was already received"),
        _CANCELLED,
        (IN_CHECKOUT | {S.CONFIRMED, S.SHIPPED, S.DELIVERED}, RejectReason.RETURN_NOT_REQUESTED,
         "no return was requested for it"),
    )),
}


def judge(event_type: type[BaseModel], order_id: str, status: OrderStatus) -> Verdict:
    rule = RULES[event_type]
    if status is rule.accept_from:
        assert can_move(status, rule.to), (status, rule.to)
        return Accept((rule.to,), rule.settle)
    for statuses, reason, why in rule.refusals:
        if status in statuses:
            return Reject(
                reason, f"{event_type.__name__} for order {order_id} ignored: {why} "
                f"(order status {status})."
            )
    raise AssertionError(f"no rule for {event_type.__name__} in {status}")  # the unit tests cover all


def unknown_order(event_type: type[BaseModel], order_id: str, session_id: str) -> Reject:
    return Reject(
        RejectReason.UNKNOWN_ORDER,
        f"{event_type.__name__} ignored: there is no order {order_id} in checkout session {session_id}.",
    )


def announce(data: BaseModel) -> list[BaseModel]:
    """The contract events (besides ``OrderStatusChanged``) an accepted event
    publishes on ``orders.events`` at once; ``OrderCancelled`` and
    ``OrderReturned`` wait until the money and the stock are back."""
    return list(ANNOUNCE[type(data)](data))


def _return_initiated(data: BaseModel) -> list[BaseModel]:
    assert isinstance(data, ReturnRequested)
    return [ReturnInitiated(order_id=data.order_id, checkout_session_id=data.checkout_session_id,
                            reason=data.reason)]


ANNOUNCE: Mapping[type[BaseModel], Callable[[BaseModel], list[BaseModel]]] = {
    CancelOrderRequested: lambda _: [],
    ReturnRequested: _return_initiated,
    OrderShipped: lambda data: [data],  # same fields: carrier, tracking_number
    OrderDelivered: lambda data: [data],
    ReturnReceived: lambda _: [],
}


def describe(data: BaseModel) -> str:
    """The history line of an accepted event: its type and what it carried."""
    extras = [
        f"{name} {value}" for name in ("reason", "carrier", "tracking_number")
        if (value := getattr(data, name, None))
    ]
    return type(data).__name__ + (f" ({', '.join(extras)})" if extras else "")
