"""What the analytics app reads from and writes to the stores: the hot mark
for inventory, and the sagas that look stuck for the dashboard.

The hot mark is a port (``HotMarker``): the composition root hands in the
same call as an operator's ``stock hot SKU --on``
(``checkout_saga.hot_marker``). Inventory decides what a hot SKU means (its
Redis gate); the analytics only say "this SKU is in demand", and do not know
inventory's tables.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import asyncpg

from messaging.db import create_pool
from messaging.settings import Settings


class HotMarker(Protocol):
    """Marks a SKU hot in inventory; False when inventory does not know the SKU."""

    async def mark_hot(self, sku: str) -> bool: ...

    async def close(self) -> None: ...


class Sinks:
    def __init__(self, settings: Settings, hot: HotMarker, stuck_after_seconds: float,
                 cache_seconds: float = 1.0) -> None:
        self._settings = settings
        self._hot = hot
        self._stuck_after = stuck_after_seconds
        self._cache_seconds = cache_seconds
        self._pools: dict[str, asyncpg.Pool] = {}
        self._stuck: tuple[float, list[dict[str, Any]]] = (0.0, [])

    async def _pool(self, schema: str) -> asyncpg.Pool:
        if schema not in self._pools:
            self._pools[schema] = await create_pool(self._settings.dsn_for(schema), 2)
        return self._pools[schema]

    async def mark_hot(self, sku: str) -> bool:
        """Mark a SKU hot; False when inventory does not know the SKU."""
        return await self._hot.mark_hot(sku)

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
        await self._hot.close()


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
