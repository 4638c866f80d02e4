"""SQL for promo codes and the usage ledger.

Taking a use is guarded in the WHERE clause (``taken < max_uses``) of the same
transaction that writes the ledger row, so PostgreSQL alone already forbids a
use past the limit; Redis in front only keeps the losers off the hot row.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import asyncpg

from services.promotions.rules import Promo


class Taken(StrEnum):
    TAKEN = "TAKEN"  # a new use, recorded in the ledger
    ALREADY = "ALREADY"  # this session already holds a use of this code
    EXHAUSTED = "EXHAUSTED"  # the ledger says no use is left


async def create(conn: asyncpg.Connection, promo: Promo) -> bool:
    """Insert a new code; False when the code already exists (it is never overwritten)."""
    created = await conn.fetchval(
        "INSERT INTO promotions.codes (code, percent_off, amount_off, max_uses, expires_at, skus, "
        "min_subtotal) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true",
        promo.code,
        promo.percent_off,
        promo.amount_off,
        promo.max_uses,
        promo.expires_at,
        None if promo.skus is None else sorted(promo.skus),
        promo.min_subtotal,
    )
    return bool(created)


async def get(conn: asyncpg.Connection, code: str) -> Promo | None:
    row = await conn.fetchrow("SELECT * FROM promotions.codes WHERE code = $1", code)
    if row is None:
        return None
    return Promo(
        code=row["code"],
        max_uses=row["max_uses"],
        percent_off=row["percent_off"],
        amount_off=row["amount_off"],
        expires_at=row["expires_at"],
        skus=None if row["skus"] is None else frozenset(row["skus"]),
        min_subtotal=row["min_subtotal"],
    )


async def take(conn: asyncpg.Connection, code: str, session_id: str, discount: int) -> Taken:
    held = await conn.fetchval(
        "SELECT code FROM promotions.usages WHERE checkout_session_id = $1 AND status = 'TAKEN'",
        session_id,
    )
    if held == code:
        return Taken.ALREADY
    if held is not None:
        # One session, one code: a (never expected) switch gives the old use back first.
        await release(conn, session_id)
    guarded = await conn.fetchval(
        "UPDATE promotions.codes SET taken = taken + 1 WHERE code = $1 AND taken < max_uses "
        "RETURNING taken",
        code,
    )
    if guarded is None:
        return Taken.EXHAUSTED
    await conn.execute(
        "INSERT INTO promotions.usages (checkout_session_id, code, discount, status) "
        "VALUES ($1, $2, $3, 'TAKEN') ON CONFLICT (checkout_session_id) DO UPDATE "
        "SET code = EXCLUDED.code, discount = EXCLUDED.discount, status = 'TAKEN', "
        "taken_at = now(), released_at = NULL",
        session_id,
        code,
        discount,
    )
    return Taken.TAKEN


async def release(conn: asyncpg.Connection, session_id: str) -> str | None:
    """Give the session's use back; returns its code, None when it held none."""
    code: str | None = await conn.fetchval(
        "UPDATE promotions.usages SET status = 'RELEASED', released_at = now() "
        "WHERE checkout_session_id = $1 AND status = 'TAKEN' RETURNING code",
        session_id,
    )
    if code is not None:
        await conn.execute(
            "UPDATE promotions.codes SET taken = taken - 1 WHERE code = $1", code
        )
    return code


async def room_left(conn: asyncpg.Connection, code: str) -> bool:
    """Whether the ledger still has a use of ``code`` to give (committed state)."""
    return bool(await conn.fetchval(
        "SELECT taken < max_uses FROM promotions.codes WHERE code = $1", code
    ))


async def holders(conn: asyncpg.Connection, code: str) -> list[str]:
    """The sessions holding a use of ``code`` according to the ledger."""
    rows = await conn.fetch(
        "SELECT checkout_session_id FROM promotions.usages WHERE code = $1 AND status = 'TAKEN'",
        code,
    )
    return [r["checkout_session_id"] for r in rows]


async def show(conn: asyncpg.Connection, code: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """
        SELECT c.code, c.percent_off, c.amount_off, c.max_uses, c.expires_at, c.skus,
               c.min_subtotal, c.created_at,
               (SELECT count(*) FROM promotions.usages u
                 WHERE u.code = c.code AND u.status = 'TAKEN') AS used,
               (SELECT count(*) FROM promotions.usages u
                 WHERE u.code = c.code AND u.status = 'RELEASED') AS released
        FROM promotions.codes c WHERE c.code = $1
        """,
        code,
    )
    if row is None:
        return None
    out = dict(row)
    out["remaining"] = max(0, out["max_uses"] - out["used"])
    return out
