"""Operator actions on stock that involve the hot-SKU gate (``checkout-saga
stock ...``). PostgreSQL is changed first: it is the record, and the Redis
side can always be rebuilt from it."""

from __future__ import annotations

import logging

import asyncpg

from messaging.errors import is_transient
from services.inventory import store
from services.inventory.gate import StockGate

log = logging.getLogger(__name__)


async def show(conn: asyncpg.Connection, gate: StockGate | None, sku: str) -> dict[str, object] | None:
    """The product row, plus the gate's counter (None: not hot, or not built yet)."""
    row = await store.show(conn, sku)
    if row is None:
        return None
    row["redis_available"] = None
    if gate is not None:
        try:
            row["redis_available"] = await gate.counter(sku)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("Redis did not answer for %s's counter: %s", sku, exc)
    return row


async def mark_hot(conn: asyncpg.Connection, gate: StockGate | None, sku: str, hot: bool) -> bool:
    """Turn the gate on (its counter built from ``available`` now, not at the
    first checkout) or off (its keys dropped: nothing is left to drift)."""
    if not await store.set_hot(conn, sku, hot):
        return False
    if gate is not None:
        if hot:
            await gate.rebuild(await store.available(conn, [sku]))
        else:
            await gate.drop(sku)
    return True


async def added(gate: StockGate | None, sku: str, units: int) -> None:
    """New units of a hot SKU are let through at once (a missing counter is
    rebuilt from PostgreSQL, which has them already)."""
    if gate is not None and units:
        await gate.put_back({sku: units})
