"""Order rows and their guarded transitions.

Every change is ``UPDATE ... WHERE order_id = $1 AND status = $expected``:
zero rows means someone else moved first, and the caller re-reads and
decides; nothing is ever overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from messaging.errors import CheckoutSagaError
from schemas.internal import CreateOrder
from services.orders.lifecycle import IllegalTransition, OrderStatus, can_move


class LostRace(CheckoutSagaError):
    """The order moved under us; re-read and decide again."""


async def create(conn: asyncpg.Connection, orders: Sequence[CreateOrder]) -> None:
    """New PENDING orders and their first history rows; a session that has its
    order already keeps it."""
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


async def by_session(
    conn: asyncpg.Connection, session_id: str, lock: bool = False
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM orders.orders WHERE checkout_session_id = $1"
        + (" FOR UPDATE" if lock else ""),
        session_id,
    )


async def by_id(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM orders.orders WHERE order_id = $1", order_id)


async def move(
    conn: asyncpg.Connection,
    order_id: str,
    current: OrderStatus,
    target: OrderStatus,
    reason: str | None = None,
) -> None:
    if not can_move(current, target):
        raise IllegalTransition(current, target)
    confirmed = ", confirmed_at = now()" if target is OrderStatus.CONFIRMED else ""
    status = await conn.execute(
        f"UPDATE orders.orders SET status = $3, updated_at = now(){confirmed} "
        "WHERE order_id = $1 AND status = $2",
        order_id, current.value, target.value,
    )
    if status != "UPDATE 1":
        raise LostRace(order_id)
    await conn.execute(
        "INSERT INTO orders.history (order_id, from_status, to_status, reason) "
        "VALUES ($1, $2, $3, $4)",
        order_id, current.value, target.value, reason,
    )


async def confirm(
    conn: asyncpg.Connection, moves: list[tuple[str, OrderStatus, OrderStatus]]
) -> dict[str, datetime]:
    """Orders walked to CONFIRMED: ``moves`` are (order id, from, to) steps,
    each order's first step from the status it was read in (rows locked). One
    guarded update per order, one history row per step; confirmed_at by order
    id. Zero rows for an order raises ``LostRace``."""
    if not moves:
        return {}
    start: dict[str, OrderStatus] = {}
    for order_id, frm, to in moves:
        if not can_move(frm, to):
            raise IllegalTransition(frm, to)
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
    if len(rows) != len(start):
        raise LostRace(f"{len(start) - len(rows)} order(s) moved under a confirmation")
    return {r["order_id"]: r["confirmed_at"] for r in rows}


async def note(
    conn: asyncpg.Connection, order_id: str, status: OrderStatus, kind: str, reason: str
) -> None:
    """A history entry that is not a move: a settlement step done, or an event
    that was refused (``kind`` 'note' or 'rejected'; from = to = the status)."""
    await conn.execute(
        "INSERT INTO orders.history (order_id, from_status, to_status, reason, kind) "
        "VALUES ($1, $2, $2, $3, $4)",
        order_id, status.value, reason, kind,
    )


async def history(conn: asyncpg.Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT at, from_status, to_status, reason, kind FROM orders.history "
        "WHERE order_id = $1 ORDER BY id",
        order_id,
    )
    return [
        {"at": r["at"].isoformat(), "from": r["from_status"], "to": r["to_status"],
         "reason": r["reason"], "kind": r["kind"]}
        for r in rows
    ]


async def settlement(conn: asyncpg.Connection, order_id: str) -> dict[str, Any] | None:
    """The cancel or return settlement of an order, for ``order show``."""
    row = await conn.fetchrow(
        "SELECT kind, reason, state, payment_status, restocked, attempts, last_error, "
        "created_at, finished_at FROM orders.settlements WHERE order_id = $1",
        order_id,
    )
    if row is None:
        return None
    out = dict(row)
    out["restocked"] = None if row["restocked"] is None else json.loads(row["restocked"])
    return out
