"""Orders command handlers for the checkout saga: create, confirm, cancel."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from checkout_saga.kafka import OutgoingMessage
from checkout_saga.messages import event_message
from checkout_saga.service import Outcome, Route, failed, ok
from checkout_saga.topics import ORDERS_EVENTS
from schemas.contract import OrderCancelled, OrderStatusChanged
from schemas.internal import CancelOrder, Command, ConfirmOrder, CreateOrder
from services.orders import store
from services.orders.lifecycle import OrderStatus

SOURCE = "urn:checkout-saga:orders"
S = OrderStatus


def status_changed(order: asyncpg.Record, frm: OrderStatus, to: OrderStatus) -> OutgoingMessage:
    data = OrderStatusChanged(
        order_id=order["order_id"],
        checkout_session_id=order["checkout_session_id"],
        from_=frm.value,
        to=to.value,
    )
    return event_message(ORDERS_EVENTS, "OrderStatusChanged", SOURCE,
                         order["checkout_session_id"], data)


async def walk(
    conn: asyncpg.Connection, order: asyncpg.Record, path: tuple[OrderStatus, ...], reason: str
) -> list[OutgoingMessage]:
    """Apply a chain of guarded moves, returning the events announcing them."""
    events = []
    current = OrderStatus(order["status"])
    for target in path:
        await store.move(conn, order["order_id"], current, target, reason)
        events.append(status_changed(order, current, target))
        current = target
    return events


async def create_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    assert isinstance(cmd, CreateOrder)
    await store.insert(conn, cmd.model_dump(mode="json", exclude={"attempt"}))
    return Outcome(ok(cmd, order_id=cmd.order_id))


async def confirm_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    assert isinstance(cmd, ConfirmOrder)
    order = await store.by_session(conn, cmd.checkout_session_id)
    if order is None:
        return Outcome(failed(cmd, "INVALID_REQUEST", "No order exists for this checkout."))
    events: list[OutgoingMessage] = []
    if order["status"] == S.PENDING:
        events = await walk(conn, order, (S.PAYMENT_AUTHORIZED, S.CONFIRMED), "checkout")
    elif order["status"] == S.PAYMENT_AUTHORIZED:
        events = await walk(conn, order, (S.CONFIRMED,), "checkout")
    fresh = await store.by_session(conn, cmd.checkout_session_id)
    assert fresh is not None
    if fresh["confirmed_at"] is None:
        return Outcome(failed(cmd, "CANCELLED", f"The order is {fresh['status']}."))
    return Outcome(ok(cmd, confirmed_at=fresh["confirmed_at"].isoformat()), events)


async def cancel_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    assert isinstance(cmd, CancelOrder)
    order = await store.by_session(conn, cmd.checkout_session_id)
    if order is None or order["status"] == S.CANCELLED:
        return Outcome(ok(cmd))
    current = OrderStatus(order["status"])
    path: tuple[OrderStatus, ...]
    if cmd.payment_failed and current is S.PENDING:
        path = (S.PAYMENT_FAILED, S.CANCELLED)
    else:
        path = (S.CANCELLED,)
    events = await walk(conn, order, path, cmd.reason)
    events.append(
        event_message(
            ORDERS_EVENTS, "OrderCancelled", SOURCE, cmd.checkout_session_id,
            OrderCancelled(order_id=order["order_id"], checkout_session_id=cmd.checkout_session_id,
                           reason=cmd.reason),
        )
    )
    return Outcome(ok(cmd), events)


ROUTES: Mapping[type[Command], Route] = {
    CreateOrder: Route(create_order),
    ConfirmOrder: Route(confirm_order),
    CancelOrder: Route(cancel_order),
}
