"""The contract events a finished saga publishes, with stable ids so a
republished result is recognisably the same event."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from messaging.message import OutgoingMessage
from messaging.messages import event_message, stable_id
from messaging.topics import CHECKOUT_RESULTS, ORDERS_CONFIRMED
from saga.definition import CURRENT
from saga.state import Failure, SagaState, SagaStatus
from schemas.contract import (
    CheckoutFailed,
    CheckoutRequested,
    CheckoutSucceeded,
    FailureReason,
    LineItem,
    OrderConfirmed,
    ShippingAddress,
)

SOURCE = "urn:checkout-saga:coordinator"
# A rejected request's reason quotes the input; the answer stays short however long that is.
_INVALID_DETAIL_MAX = 2000
_ORDER_NS = uuid.UUID("0b9e8f57-5b7c-4f35-8d0e-3c1c0f4a9b21")


def order_id_for(session_id: str) -> str:
    """One session, one order id, however often the checkout is retried."""
    return "ord_" + uuid.uuid5(_ORDER_NS, session_id).hex[:24]


def initial_context(request: CheckoutRequested, request_id: str) -> dict[str, Any]:
    subtotal = sum(item.quantity * item.unit_price for item in request.items)
    return {
        "request_id": request_id,
        "customer_id": request.customer_id,
        "currency": request.currency,
        "items": [item.model_dump(mode="json") for item in request.items],
        "promo_code": request.promo_code,
        "payment": request.payment.model_dump(mode="json"),
        "shipping_address": None
        if request.shipping_address is None
        else request.shipping_address.model_dump(mode="json", exclude_none=True),
        "subtotal": subtotal,
        "discount": 0,
        "total": subtotal,
        "order_id": order_id_for(request.checkout_session_id),
    }


def result_messages(state: SagaState, finished_at: datetime, with_order: bool) -> list[OutgoingMessage]:
    """CheckoutSucceeded (+ OrderConfirmed on first publication) or CheckoutFailed."""
    session = state.session_id
    ctx: Mapping[str, Any] = state.context
    if state.status is SagaStatus.SUCCEEDED:
        out = [
            event_message(
                CHECKOUT_RESULTS, "CheckoutSucceeded", SOURCE, session,
                CheckoutSucceeded(
                    checkout_session_id=session, order_id=ctx["order_id"],
                    subtotal=ctx["subtotal"], discount=ctx["discount"], total=ctx["total"],
                    currency=ctx["currency"],
                ),
                id=stable_id(session, "CheckoutSucceeded"), time=finished_at,
            )
        ]
        if with_order:
            out.append(order_confirmed(state))
        return out
    failure = state.failure
    assert failure is not None
    return [
        event_message(
            CHECKOUT_RESULTS, "CheckoutFailed", SOURCE, session,
            CheckoutFailed(
                checkout_session_id=session, reason=FailureReason(failure.reason),
                detail=failure.detail, skus=list(failure.skus) or None,
            ),
            id=stable_id(session, "CheckoutFailed"), time=finished_at,
        )
    ]


def order_confirmed(state: SagaState) -> OutgoingMessage:
    ctx = state.context
    confirmed_at = datetime.fromisoformat(ctx["confirmed_at"])
    address = ctx.get("shipping_address")
    data = OrderConfirmed(
        order_id=ctx["order_id"],
        checkout_session_id=state.session_id,
        customer_id=ctx["customer_id"],
        items=[LineItem.model_validate(i) for i in ctx["items"]],
        subtotal=ctx["subtotal"],
        discount=ctx["discount"],
        total=ctx["total"],
        currency=ctx["currency"],
        shipping_address=None if address is None else ShippingAddress.model_validate(address),
        confirmed_at=confirmed_at,
    )
    return event_message(
        ORDERS_CONFIRMED, "OrderConfirmed", SOURCE, state.session_id, data,
        id=stable_id(state.session_id, "OrderConfirmed"), time=confirmed_at,
    )


def rejected(session_id: str, reason: str) -> SagaState:
    """The ended saga of a request that failed its checks: no step ran, and
    its one result is CheckoutFailed INVALID_REQUEST, republished (same id)
    to whatever arrives later for the session."""
    detail = f"The checkout request is invalid: {reason}"
    return SagaState(
        session_id=session_id, definition_version=CURRENT.version, status=SagaStatus.FAILED,
        cursor=0, attempt=0,
        failure=Failure(FailureReason.INVALID_REQUEST.value, detail[:_INVALID_DETAIL_MAX]),
        context={"invalid_request": True},
    )
