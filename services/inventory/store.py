"""SQL for stock and holds. Every guard is in the WHERE clause of the
statement that changes the row: no SELECT ... FOR UPDATE on products."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.inventory.rules import Line, in_sku_order


async def prices(conn: asyncpg.Connection, skus: list[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT sku, price FROM inventory.products WHERE sku = ANY($1::text[])", skus
    )
    return {r["sku"]: r["price"] for r in rows}


async def available(conn: asyncpg.Connection, skus: list[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT sku, available FROM inventory.products WHERE sku = ANY($1::text[])", skus
    )
    return {r["sku"]: r["available"] for r in rows}


async def take(conn: asyncpg.Connection, lines: list[Line], into: str) -> bool:
    """Move every line's quantity out of ``available`` into ``held`` or ``sold``.

    All or nothing is the caller's savepoint; this returns False at the first
    line short of stock.
    """
    assert into in ("held", "sold")
    for line in in_sku_order(lines):
        status = await conn.execute(
            f"UPDATE inventory.products SET available = available - $2, {into} = {into} + $2, "
            "updated_at = now() WHERE sku = $1 AND available >= $2",
            line.sku,
            line.quantity,
        )
        if status != "UPDATE 1":
            return False
    return True


async def add_holds(
    conn: asyncpg.Connection, session_id: str, lines: list[Line], expires_at: datetime
) -> None:
    await conn.executemany(
        "INSERT INTO inventory.holds (checkout_session_id, sku, quantity, expires_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (checkout_session_id, sku) DO UPDATE "
        "SET quantity = EXCLUDED.quantity, status = 'ACTIVE', expires_at = EXCLUDED.expires_at, "
        "ended_at = NULL",
        [(session_id, line.sku, line.quantity, expires_at) for line in in_sku_order(lines)],
    )


async def end_holds(conn: asyncpg.Connection, session_id: str, status: str) -> dict[str, int]:
    """End the session's active holds; returns what they held by SKU."""
    rows = await conn.fetch(
        "UPDATE inventory.holds SET status = $2, ended_at = now() "
        "WHERE checkout_session_id = $1 AND status = 'ACTIVE' RETURNING sku, quantity",
        session_id,
        status,
    )
    return {r["sku"]: r["quantity"] for r in rows}


async def move_held(conn: asyncpg.Connection, held: dict[str, int], to: str) -> None:
    """Move held quantities back to ``available`` or on to ``sold``."""
    assert to in ("available", "sold")
    for sku in sorted(held):
        await conn.execute(
            f"UPDATE inventory.products SET held = held - $2, {to} = {to} + $2, updated_at = now() "
            "WHERE sku = $1",
            sku,
            held[sku],
        )


async def expire_due_holds(conn: asyncpg.Connection, batch: int) -> int:
    """Release up to ``batch`` expired holds; safe to run in many sweepers at once."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT checkout_session_id, sku FROM inventory.holds
            WHERE status = 'ACTIVE' AND expires_at <= now()
            ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        UPDATE inventory.holds h SET status = 'EXPIRED', ended_at = now()
        FROM due WHERE h.checkout_session_id = due.checkout_session_id AND h.sku = due.sku
        RETURNING h.sku, h.quantity
        """,
        batch,
    )
    released: dict[str, int] = {}
    for r in rows:
        released[r["sku"]] = released.get(r["sku"], 0) + r["quantity"]
    await move_held(conn, released, "available")
    return len(rows)


async def set_stock(conn: asyncpg.Connection, sku: str, price: int, add: int) -> None:
    await conn.execute(
        "INSERT INTO inventory.products (sku, price, available, added) VALUES ($1, $2, $3, $3) "
        "ON CONFLICT (sku) DO UPDATE SET price = EXCLUDED.price, "
        "available = inventory.products.available + EXCLUDED.available, "
        "added = inventory.products.added + EXCLUDED.added, updated_at = now()",
        sku,
        price,
        add,
    )


async def show(conn: asyncpg.Connection, sku: str) -> dict[str, object] | None:
    row = await conn.fetchrow(
        "SELECT sku, price, available, held, sold, added, hot FROM inventory.products WHERE sku = $1",
        sku,
    )
    return dict(row) if row else None
