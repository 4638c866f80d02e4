"""CreateOrder and ConfirmOrder for many checkout sessions at once: the same
rules as ``handlers.create_order`` and ``handlers.confirm_order``, in one or
two statements for a whole lane instead of several per command."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import asyncpg

from checkout_saga.kafka import OutgoingMessage
from checkout_saga.service import Outcome, Route, failed, ok
from schemas.internal import Command, ConfirmOrder, CreateOrder
from services.orders import handlers
from services.orders.handlers import status_changed
from services.orders.lifecycle import OrderStatus, can_move
from services.orders.store import LostRace

S = OrderStatus
# Where checkout confirmation walks an order from; other states answer CANCELLED.
CONFIRM_PATHS: dict[OrderStatus, tuple[OrderStatus, ...]] = {
    S.PENDING: (S.PAYMENT_AUTHORIZED, S.CONFIRMED),
    S.PAYMENT_AUTHORIZED: (S.CONFIRMED,),
}


async def create_orders(conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
    orders = [c for c in cmds if isinstance(c, CreateOrder)]
    assert len(orders) == len(cmds)
    await conn.execute(
        """
        WITH created AS (
            INSERT INTO orders.orders (order_id, checkout_session_id, customer_id, status, items,
                                       subtotal, discount, total, currency, shipping_address)
            SELECT o, s, c, 'PENDING', i::jsonb, sub, d, t, cur, a::jsonb
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                        $6::bigint[], $7::bigint[], $8::text[], $9::text[])
                AS n(o, s, c, i, sub, d, t, cur, a)
            ON CONFLICT (checkout_session_id) DO NOTHING RETURNING order_id
        )
        INSERT INTO orders.history (order_id, to_status, reason)
        SELECT order_id, 'PENDING', 'checkout' FROM created
        """,
        [c.order_id for c in orders],
        [c.checkout_session_id for c in orders],
        [c.customer_id for c in orders],
        [json.dumps([i.model_dump(mode="json") for i in c.items]) for c in orders],
        [c.subtotal for c in orders],
        [c.discount for c in orders],
        [c.total for c in orders],
        [c.currency for c in orders],
        [None if c.shipping_address is None else c.shipping_address.model_dump_json()
         for c in orders],
    )
    return [Outcome(ok(c, order_id=c.order_id)) for c in orders]


async def confirm_orders(conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
    assert all(isinstance(c, ConfirmOrder) for c in cmds)
    rows = await conn.fetch(
        "SELECT order_id, checkout_session_id, status, confirmed_at FROM orders.orders "
        "WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
        [c.checkout_session_id for c in cmds],
    )
    by_session = {r["checkout_session_id"]: r for r in rows}
    moves: list[tuple[str, OrderStatus, OrderStatus]] = []
    events: dict[str, list[OutgoingMessage]] = {}
    for cmd in cmds:
        order = by_session.get(cmd.checkout_session_id)
        if order is None:
            continue
        current = OrderStatus(order["status"])
        for target in CONFIRM_PATHS.get(current, ()):
            assert can_move(current, target)
            moves.append((order["order_id"], current, target))
            events.setdefault(order["order_id"], []).append(status_changed(order, current, target))
            current = target
    confirmed = await _confirm(conn, moves)
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


async def _confirm(
    conn: asyncpg.Connection, moves: list[tuple[str, OrderStatus, OrderStatus]]
) -> dict[str, object]:
    """Every order to CONFIRMED from the status it was read in (rows locked),
    with one history row per step; returns confirmed_at by order id."""
    if not moves:
        return {}
    start = {}
    for order_id, frm, _to in moves:
        start.setdefault(order_id, frm)
    rows = await conn.fetch(
        """
        WITH moved AS (
            UPDATE orders.orders o SET status = 'CONFIRMED', confirmed_at = now(), updated_at = now()
            FROM unnest($1::text[], $2::text[]) AS m(id, expected)
            WHERE o.order_id = m.id AND o.status = m.expected
            RETURNING o.order_id, o.confirmed_at
        ), logged AS (
            INSERT INTO orders.history (order_id, from_status, to_status, reason)
            SELECT id, f, t, 'checkout' FROM unnest($3::text[], $4::text[], $5::text[]) AS h(id, f, t)
            WHERE EXISTS (SELECT 1 FROM moved)
        )
        SELECT order_id, confirmed_at FROM moved
        """,
        list(start), [s.value for s in start.values()],
        [m[0] for m in moves], [m[1].value for m in moves], [m[2].value for m in moves],
    )
    if len(rows) != len(start):  # the rows are locked: only a bug gets here
        raise LostRace(f"{len(start) - len(rows)} order(s) moved under a lane")
    return {r["order_id"]: r["confirmed_at"] for r in rows}


# The orders service's routes: handlers.ROUTES, with the lane versions attached.
ROUTES: Mapping[type[Command], Route] = {
    **handlers.ROUTES,
    CreateOrder: dataclasses.replace(handlers.ROUTES[CreateOrder], many=create_orders),
    ConfirmOrder: dataclasses.replace(handlers.ROUTES[ConfirmOrder], many=confirm_orders),
}
