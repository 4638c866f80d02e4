"""SQL for stock and holds. Every guard is in the WHERE clause of the
statement that changes the row: no SELECT ... FOR UPDATE on products."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import AbstractSet as Set

import asyncpg

from messaging.errors import TransientError
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


async def catalogue(conn: asyncpg.Connection, skus: list[str]) -> dict[str, tuple[int, bool]]:
    """Price and hot flag by SKU, in one read (no lock: MVCC never waits here)."""
    rows = await conn.fetch(
        "SELECT sku, price, hot FROM inventory.products WHERE sku = ANY($1::text[])", skus
    )
    return {r["sku"]: (r["price"], r["hot"]) for r in rows}


async def lock_products(conn: asyncpg.Connection, skus: list[str], sessions: list[str]) -> None:
    """Lock the rows of ``skus`` and of the SKUs ``sessions`` hold, in SKU order
    (a lane's first statement: every later update in its transaction then
    finds its row locked already, so lanes queue and never deadlock)."""
    await conn.execute(
        "SELECT 1 FROM inventory.products WHERE sku IN (SELECT unnest($1::text[]) UNION "
        "SELECT sku FROM inventory.holds WHERE checkout_session_id = ANY($2::text[]) "
        "AND status = 'ACTIVE') ORDER BY sku FOR UPDATE",
        skus,
        sessions,
    )


async def take(
    conn: asyncpg.Connection, lines: list[Line], into: str, mark_hot: Set[str] = frozenset()
) -> bool:
    """Move every line's quantity out of ``available`` into ``held`` or ``sold``.

    All or nothing is the caller's savepoint; this returns False at the first
    line short of stock. ``mark_hot`` SKUs get their hot flag set by the same
    UPDATE, so no row is locked twice or out of SKU order.
    """
    assert into in ("held", "sold")
    for line in in_sku_order(lines):
        status = await conn.execute(
            f"UPDATE inventory.products SET available = available - $2, {into} = {into} + $2, "
            "hot = hot OR $3, updated_at = now() WHERE sku = $1 AND available >= $2",
            line.sku,
            line.quantity,
            line.sku in mark_hot,
        )
        if status != "UPDATE 1":
            return False
    return True


async def settle(conn: asyncpg.Connection, held: Mapping[str, int], lines: list[Line]) -> bool:
    """Commit a cart: held units become sold, and a line whose hold lapsed takes
    the rest from ``available`` (guarded). One UPDATE per SKU, in SKU order, so
    a commit never locks rows in another order than a reserve does."""
    want = {line.sku: line.quantity for line in lines}
    for sku in sorted(set(want) | set(held)):
        from_held = held.get(sku, 0)
        regain = max(0, want.get(sku, 0) - from_held)
        status = await conn.execute(
            "UPDATE inventory.products SET held = held - $2, available = available - $3, "
            "sold = sold + $2 + $3, updated_at = now() WHERE sku = $1 AND available >= $3",
            sku,
            from_held,
            regain,
        )
        if status != "UPDATE 1":
            return False
    return True


async def books(conn: asyncpg.Connection, skus: list[str]) -> dict[str, asyncpg.Record]:
    """Price, hot flag and ``available`` by SKU, the rows locked in SKU order."""
    rows = await conn.fetch(
        "SELECT sku, price, hot, available FROM inventory.products WHERE sku = ANY($1::text[]) "
        "ORDER BY sku FOR UPDATE",
        skus,
    )
    return {r["sku"]: r for r in rows}


async def take_and_hold(
    conn: asyncpg.Connection,
    taken: Mapping[str, int],
    mark_hot: set[str],
    holds: list[tuple[str, str, int, float]],
) -> datetime | None:
    """Move each SKU's total out of ``available`` into ``held`` (``mark_hot`` SKUs
    flagged by the same update) and write the holds (session, SKU, units, TTL in
    seconds), in one statement. A hold expires its TTL after PostgreSQL's now(),
    the clock the sweeper compares it with; returns that now() (None: nothing taken)."""
    if not taken:
        return None
    skus = sorted(taken)
    row = await conn.fetchrow(
        """
        WITH took AS (
            UPDATE inventory.products p SET available = p.available - t.q, held = p.held + t.q,
                hot = p.hot OR t.h, updated_at = now()
            FROM unnest($1::text[], $2::int[], $3::bool[]) AS t(sku, q, h)
            WHERE p.sku = t.sku AND p.available >= t.q RETURNING 1
        ), held AS (
            INSERT INTO inventory.holds (checkout_session_id, sku, quantity, expires_at)
            SELECT s, k, q, now() + make_interval(secs => t)
            FROM unnest($4::text[], $5::text[], $6::int[], $7::float8[]) AS h(s, k, q, t)
            ON CONFLICT (checkout_session_id, sku) DO UPDATE
            SET quantity = EXCLUDED.quantity, status = 'ACTIVE', expires_at = EXCLUDED.expires_at,
                ended_at = NULL
        )
        SELECT count(*) AS moved, now() AS now FROM took
        """,
        skus, [taken[s] for s in skus], [s in mark_hot for s in skus],
        *(list(column) for column in zip(*holds, strict=True)),
    )
    moved = row["moved"]
    if moved != len(skus):  # the rows are locked: only a bug or an operator gets here
        raise TransientError(f"stock moved under a lane ({moved} of {len(skus)} SKUs taken)")
    now: datetime = row["now"]
    return now


async def sell_held(conn: asyncpg.Connection, sessions: list[str], expected: int) -> None:
    """The sessions' active holds become sales: hold rows and counters together."""
    if not sessions:
        return
    ended = await conn.fetchval(
        """
        WITH ended AS (
            UPDATE inventory.holds SET status = 'COMMITTED', ended_at = now()
            WHERE checkout_session_id = ANY($1::text[]) AND status = 'ACTIVE'
            RETURNING sku, quantity
        ), sold AS (
            UPDATE inventory.products p SET held = p.held - e.q, sold = p.sold + e.q,
                updated_at = now()
            FROM (SELECT sku, sum(quantity)::int AS q FROM ended GROUP BY sku) AS e
            WHERE p.sku = e.sku
        )
        SELECT count(*) FROM ended
        """,
        sessions,
    )
    if ended != expected:
        raise TransientError(f"holds moved under a lane ({ended} of {expected} ended)")


async def active_holds(conn: asyncpg.Connection, sessions: list[str]) -> dict[str, dict[str, int]]:
    """The sessions' active holds: quantity by SKU, by session."""
    rows = await conn.fetch(
        "SELECT checkout_session_id, sku, quantity FROM inventory.holds "
        "WHERE checkout_session_id = ANY($1::text[]) AND status = 'ACTIVE'",
        sessions,
    )
    held: dict[str, dict[str, int]] = {}
    for r in rows:
        held.setdefault(r["checkout_session_id"], {})[r["sku"]] = r["quantity"]
    return held


async def add_holds(
    conn: asyncpg.Connection, session_id: str, lines: list[Line], ttl_seconds: float
) -> datetime:
    """The session's holds, expiring ``ttl_seconds`` after PostgreSQL's now(), the
    clock the sweeper compares them with; returns that expiry."""
    ordered = in_sku_order(lines)
    expires: datetime = await conn.fetchval(
        "WITH held AS (INSERT INTO inventory.holds (checkout_session_id, sku, quantity, expires_at) "
        "SELECT $1, s, q, now() + make_interval(secs => $4) "
        "FROM unnest($2::text[], $3::int[]) AS l(s, q) ON CONFLICT (checkout_session_id, sku) "
        "DO UPDATE SET quantity = EXCLUDED.quantity, status = 'ACTIVE', "
        "expires_at = EXCLUDED.expires_at, ended_at = NULL RETURNING expires_at) "
        "SELECT max(expires_at) FROM held",
        session_id, [line.sku for line in ordered], [line.quantity for line in ordered],
        float(ttl_seconds),
    )
    return expires


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


async def expire_due(conn: asyncpg.Connection, batch: int) -> list[tuple[str, str, int]]:
    """Expire up to ``batch`` due holds and put their units back on sale.

    Safe in many sweepers at once: each claims its rows with ``FOR UPDATE SKIP
    LOCKED`` (a row another sweeper holds is skipped, a row it already ended
    no longer matches ``status = 'ACTIVE'``), and the counters move by SKU in
    SKU order. Returns what was expired: (session, sku, quantity).
    """
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT checkout_session_id, sku FROM inventory.holds
            WHERE status = 'ACTIVE' AND expires_at <= now()
            ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        UPDATE inventory.holds h SET status = 'EXPIRED', ended_at = now()
        FROM due WHERE h.checkout_session_id = due.checkout_session_id AND h.sku = due.sku
            AND h.status = 'ACTIVE'
        RETURNING h.checkout_session_id, h.sku, h.quantity
        """,
        batch,
    )
    released: dict[str, int] = {}
    for r in rows:
        released[r["sku"]] = released.get(r["sku"], 0) + r["quantity"]
    await move_held(conn, released, "available")
    return [(r["checkout_session_id"], r["sku"], r["quantity"]) for r in rows]


async def expire_due_holds(conn: asyncpg.Connection, batch: int) -> int:
    return len(await expire_due(conn, batch))


async def put_back(conn: asyncpg.Connection, lines: list[Line]) -> dict[str, int]:
    """Move sold units back to ``available`` (a cancelled or returned order).

    The guard ``sold >= n`` keeps the books whole if an operator changed the
    stock meanwhile; returns what was put back, by SKU.
    """
    restocked: dict[str, int] = {}
    for line in in_sku_order(lines):
        status = await conn.execute(
            "UPDATE inventory.products SET sold = sold - $2, available = available + $2, "
            "updated_at = now() WHERE sku = $1 AND sold >= $2",
            line.sku,
            line.quantity,
        )
        if status == "UPDATE 1":
            restocked[line.sku] = line.quantity
    return restocked


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


async def set_hot(conn: asyncpg.Connection, sku: str, hot: bool) -> bool:
    status = await conn.execute(
        "UPDATE inventory.products SET hot = $2, updated_at = now() WHERE sku = $1", sku, hot
    )
    return bool(status == "UPDATE 1")


async def hot_among(conn: asyncpg.Connection, skus: list[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT sku FROM inventory.products WHERE sku = ANY($1::text[]) AND hot", skus
    )
    return {r["sku"] for r in rows}


async def hot_skus(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT sku FROM inventory.products WHERE hot ORDER BY sku")
    return [r["sku"] for r in rows]


async def books_for_reconcile(
    conn: asyncpg.Connection, sku: str, sessions: list[str]
) -> tuple[int, dict[str, tuple[str, datetime | None]]] | None:
    """``available`` and the holds of ``sessions`` for one SKU, from one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        available = await conn.fetchval(
            "SELECT available FROM inventory.products WHERE sku = $1", sku
        )
        if available is None:
            return None
        rows = await conn.fetch(
            "SELECT checkout_session_id, status, ended_at FROM inventory.holds "
            "WHERE sku = $1 AND checkout_session_id = ANY($2::text[])",
            sku,
            sessions,
        )
    return available, {r["checkout_session_id"]: (r["status"], r["ended_at"]) for r in rows}


async def show(conn: asyncpg.Connection, sku: str) -> dict[str, object] | None:
    row = await conn.fetchrow(
        "SELECT sku, price, available, held, sold, added, hot FROM inventory.products WHERE sku = $1",
        sku,
    )
    return dict(row) if row else None


async def page(conn: asyncpg.Connection, after: str | None, limit: int) -> list[dict[str, object]]:
    """Products in SKU order after ``after``: keyset paging on the primary key,
    as fast on the last page as on the first."""
    rows = await conn.fetch(
        "SELECT sku, price, available, held, sold, added, hot FROM inventory.products "
        "WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2",
        after,
        limit,
    )
    return [dict(r) for r in rows]
