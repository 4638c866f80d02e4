"""What the analytics app reads from and writes to PostgreSQL: the hot mark
for inventory, and the sagas that look stuck for the dashboard.

The hot mark goes through the same call as an operator's ``stock hot SKU
--on`` (``services.inventory.admin.mark_hot``): the ``hot`` column of
``inventory.products``, and the SKU's Redis counter built from PostgreSQL at
once. Inventory decides what a hot SKU means (its Redis gate); the analytics
only say "this SKU is in demand".
"""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import redis.asyncio

from messaging.db import create_pool
from messaging.settings import Settings
from services.inventory import admin as inventory_admin
from services.inventory.gate import RedisStockGate


class Sinks:
    def __init__(self, settings: Settings, stuck_after_seconds: float, cache_seconds: float = 1.0) -> None:
        self._settings = settings
        self._stuck_after = stuck_after_seconds
        self._cache_seconds = cache_seconds
        self._pools: dict[str, asyncpg.Pool] = {}
        self._redis: redis.asyncio.Redis | None = None
        self._stuck: tuple[float, list[dict[str, Any]]] = (0.0, [])

    async def _pool(self, schema: str) -> asyncpg.Pool:
        if schema not in self._pools:
            self._pools[schema] = await create_pool(self._settings.dsn_for(schema), 2)
        return self._pools[schema]

    def _gate(self) -> RedisStockGate | None:
        if self._redis is None and self._settings.redis_url:
            self._redis = redis.asyncio.from_url(self._settings.redis_url)
        return RedisStockGate(self._redis) if self._redis is not None else None

    async def mark_hot(self, sku: str) -> bool:
        """Mark a SKU hot; False when inventory does not know the SKU."""
        pool = await self._pool("inventory")
        async with pool.acquire() as conn:
            return await inventory_admin.mark_hot(conn, self._gate(), sku, True)

    async def stuck_sagas(self, limit: int = 20) -> list[dict[str, Any]]:
        """Sagas marked stuck, or RUNNING/COMPENSATING and untouched for a while
        (cached briefly: every open dashboard asks every few seconds)."""
        at, rows = self._stuck
        if time.monotonic() - at < self._cache_seconds:
            return rows
        pool = await self._pool("saga")
        found = await pool.fetch(
            "SELECT checkout_session_id, status, state, created_at, updated_at, "
            "extract(epoch FROM now() - updated_at) AS idle FROM saga.instances "
            "WHERE status IN ('RUNNING', 'COMPENSATING') "
            "AND (updated_at < now() - make_interval(secs => $1) OR (state->>'stuck')::boolean) "
            "ORDER BY updated_at LIMIT $2",
            self._stuck_after, limit,
        )
        rows = [_stuck_row(r) for r in found]
        self._stuck = (time.monotonic(), rows)
        return rows

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def _stuck_row(row: asyncpg.Record) -> dict[str, Any]:
    state = json.loads(row["state"])
    failure = state.get("failure") or {}
    return {
        "checkout_session_id": row["checkout_session_id"],
        "status": row["status"],
        "stuck": bool(state.get("stuck")),
        "reason": failure.get("reason"),
        "idle_seconds": round(float(row["idle"]), 1),
        "created_at": row["created_at"].isoformat(),
    }
