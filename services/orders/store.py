"""Order rows and their guarded transitions.

Every change is ``UPDATE ... WHERE order_id = $1 AND status = $expected``:
zero rows means someone else moved first, and the caller re-reads and
decides; nothing is ever overwritten.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from services.orders.lifecycle import IllegalTransition, OrderStatus, can_move


class LostRace(Exception):
    """The order moved under us; re-read and decide again."""


async def insert(conn: asyncpg.Connection, order: dict[str, Any]) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO orders.orders (order_id, checkout_session_id, customer_id, status, items, "
        "subtotal, discount, total, currency, shipping_address) "
        "VALUES ($1, $2, $3, 'PENDING', $4::jsonb, $5, $6, $7, $8, $9::jsonb) "
        "ON CONFLICT (checkout_session_id) DO NOTHING RETURNING true",
        order["order_id"], order["checkout_session_id"], order["customer_id"],
        json.dumps(order["items"]), order["subtotal"], order["discount"], order["total"],
        order["currency"],
        None if order.get("shipping_address") is None else json.dumps(order["shipping_address"]),
    )
    if inserted:
        await conn.execute(
            "INSERT INTO orders.history (order_id, to_status, reason) VALUES ($1, 'PENDING', $2)",
            order["order_id"], "checkout",
        )
    return bool(inserted)


async def by_session(conn: asyncpg.Connection, session_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM orders.orders WHERE checkout_session_id = $1", session_id
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
