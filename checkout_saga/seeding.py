"""Stock for a run of demo, bench or chaos: SKUs at a price with units, some marked hot
(gated in Redis), written as an operator's `stock set` and `stock hot --on` would."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from checkout_saga import bootstrap
from messaging.settings import Settings
from services.inventory import admin as inventory_admin
from services.inventory import store as inventory_store


async def seed_stock(settings: Settings, stock: Mapping[str, tuple[int, int]],
                     hot: Iterable[str] = ()) -> None:
    """``stock``: SKU -> (price in minor units, units added)."""
    async with bootstrap.schema_connection(settings, "inventory") as conn:
        for sku, (price, units) in stock.items():
            await inventory_store.set_stock(conn, sku, price, units)
        for sku in hot:
            # No gate handed in: inventory builds the counter from PostgreSQL on first use.
            await inventory_admin.mark_hot(conn, None, sku, True)
