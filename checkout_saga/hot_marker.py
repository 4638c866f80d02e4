"""The analytics app's hot mark, as an operator's ``stock hot SKU --on`` does it: the
``hot`` column of ``inventory.products`` and the SKU's Redis counter, built from
PostgreSQL at once (``services.inventory.admin.mark_hot``). Built here, in the
application, so that analytics/ knows the port (``analytics.sinks.HotMarker``) and not
inventory's tables."""

from __future__ import annotations

import asyncpg
import redis.asyncio

from messaging.db import create_pool
from messaging.settings import Settings
from services.inventory import admin as inventory_admin
from services.inventory.redis_gate import RedisStockGate


class InventoryHotMarker:
    """``HotMarker`` over inventory's database and Redis gate (opened on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._redis: redis.asyncio.Redis | None = None

    async def mark_hot(self, sku: str) -> bool:
        if self._pool is None:
            self._pool = await create_pool(self._settings.dsn_for("inventory"), 2)
        if self._redis is None and self._settings.redis_url:
            self._redis = redis.asyncio.from_url(self._settings.redis_url)
        gate = RedisStockGate(self._redis) if self._redis is not None else None
        async with self._pool.acquire() as conn:
            return await inventory_admin.mark_hot(conn, gate, sku, True)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
