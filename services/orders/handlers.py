"""Orders command handlers for the checkout saga: create, confirm, cancel."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from messaging.errors import PermanentError
from messaging.message import OutgoingMessage
from messaging.messages import event_message
from messaging.service import Outcome, Route, failed, ok
from messaging.topics import ORDERS_EVENTS
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


# Where checkout confirmation walks an order from; other states answer CANCELLED.
CONFIRM_PATHS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    S.PENDING: (S.PAYMENT_AUTHORIZED, S.CONFIRMED),
    S.PAYMENT_AUTHORIZED: (S.CONFIRMED,),
}


async def create_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    return (await create_orders(conn, [cmd]))[0]


async def create_orders(conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
    orders = [c for c in cmds if isinstance(c, CreateOrder)]
    assert len(orders) == len(cmds)
    try:
        await store.create(conn, orders)
    except asyncpg.UniqueViolationError as exc:
        # Order ids derive from session ids, so this command is corrupt: refused.
        raise PermanentError(f"an order id in this command is another session's: {exc}") from exc
    return [Outcome(ok(c, order_id=c.order_id)) for c in orders]


async def confirm_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    return (await confirm_orders(conn, [cmd]))[0]


async def confirm_orders(conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
    """Walk each order to CONFIRMED (one guarded update for all) and answer
    with its confirmed_at; an order that cannot be confirmed answers CANCELLED."""
    assert all(isinstance(c, ConfirmOrder) for c in cmds)
    rows = await conn.fetch(
        "SELECT order_id, checkout_session_id, status, confirmed_at FROM orders.orders "
        "WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
        [c.checkout_session_id for c in cmds],
    )
    by_session = {r["checkout_session_id"]: r for r in rows}
    moves: list[tuple[str, OrderStatus, OrderStatus]] = []
    events: dict[str, list[OutgoingMessage]] = {}
    for order in by_session.values():
        current = OrderStatus(order["status"])
        for target in CONFIRM_PATHS.get(current, ()):
            moves.append((order["order_id"], current, target))
            events.setdefault(order["order_id"], []).append(status_changed(order, current, target))
            current = target
    confirmed = await store.confirm(conn, moves)
    outcomes = []
    for cmd in cmds:
        order = by_session.get(cmd.checkout_session_id)
        if order is None:
            outcomes.append(Outcome(failed(cmd, "INVALID_REQUEST", "No order exists for this checkout.")))
            continue
        at = confirmed.get(order["order_id"], order["confirmed_at"])
        if at is None:
            outcomes.append(Outcome(failed(cmd, "CANCELLED", f"The order is {order['status']}.")))
        else:
            outcomes.append(Outcome(ok(cmd, confirmed_at=at.isoformat()),
                                    events.get(order["order_id"], [])))
    return outcomes


async def cancel_order(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    """Idempotent by state, so it runs again on every delivery (no inbox): a
    CancelOrder re-sent because a CreateOrder landed after the first one (a
    redriven dead letter) cancels the order the first one could not find."""
    assert isinstance(cmd, CancelOrder)
    # Locked: without the inbox row, two deliveries at once queue here.
    order = await store.by_session(conn, cmd.checkout_session_id, lock=True)
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
    CreateOrder: Route(create_order, many=create_orders),
    ConfirmOrder: Route(confirm_order, many=confirm_orders),
    # A compensation runs again when re-sent (see cancel_order).
    CancelOrder: Route(cancel_order, dedupe=False),
}
