"""Inventory's metrics, on the workers' registry (``messaging.metrics.REGISTRY``)."""

from __future__ import annotations

import asyncpg
from prometheus_client import Gauge

from messaging.metrics import REGISTRY

HOLDS_LIVE = Gauge("checkout_holds_live", "Active stock holds; sampled by the timers role.",
                   registry=REGISTRY)


async def sample_live_holds(pool: asyncpg.Pool) -> None:
    HOLDS_LIVE.set(await pool.fetchval(
        "SELECT count(*) FROM inventory.holds WHERE status = 'ACTIVE'"))
