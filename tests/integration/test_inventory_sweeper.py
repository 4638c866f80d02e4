"""Many hold sweepers at once release every expired hold exactly once.

The holds are written straight into a scratch database (no session worker
sweeps it), 10,000 of them already expired, spread over 20 SKUs of which 5
are hot with their holders in Redis. Then 20 sweepers start together with
small batches, so they fight over the same rows the whole time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.asyncio
from helpers import uid

from messaging.db import migrate
from services.inventory import schema
from services.inventory.redis_gate import RedisStockGate, holders_key, stock_key
from services.inventory.timers import sweep_holds

SKUS, PER_SKU, HOT, SWEEPERS = 20, 500, 5, 20


async def test_twenty_sweepers_release_ten_thousand_holds_exactly_once(stack, scratch_database) -> None:  # type: ignore[no-untyped-def]
    pool = await asyncpg.create_pool(await scratch_database(), min_size=SWEEPERS, max_size=SWEEPERS)
    client: Any = redis.asyncio.from_url(stack.env["REDIS_URL"])
    try:
        await migrate(pool, schema.SCHEMA, schema.DDL)
        run = uid("SW")
        skus = [f"{run}-{i:02d}" for i in range(SKUS)]
        hot = skus[:HOT]
        await pool.execute(
            "INSERT INTO inventory.products (sku, price, available, held, added, hot) "
            "SELECT s, 100, 0, $2, $2, s = ANY($3::text[]) FROM unnest($1::text[]) s",
            skus, PER_SKU, hot)
        await pool.execute(
            "INSERT INTO inventory.holds (checkout_session_id, sku, quantity, expires_at) "
            "SELECT 'cs-' || g, s, 1, now() - interval '1 minute' "
            "FROM unnest($1::text[]) s, generate_series(1, $2) g", skus, PER_SKU)
        for sku in hot:  # the gate let every one of these holders through
            await client.hset(stock_key(sku), mapping={"available": 0, "version": 1})
            await client.hset(holders_key(sku),
                              mapping={f"cs-{g}": "1:0" for g in range(1, PER_SKU + 1)})

        gate = RedisStockGate(client)
        start = asyncio.Event()

        async def sweeper() -> int:
            await start.wait()
            return await sweep_holds(pool, gate, batch=100)

        tasks = [asyncio.create_task(sweeper()) for _ in range(SWEEPERS)]
        await asyncio.sleep(0)
        start.set()
        counts = await asyncio.gather(*tasks)

        assert sum(counts) == SKUS * PER_SKU  # a hold released twice would count twice
        assert sum(1 for c in counts if c) > 1  # they really raced
        statuses = await pool.fetch("SELECT status, count(*) AS n FROM inventory.holds "
                                    "WHERE sku = ANY($1::text[]) GROUP BY status", skus)
        assert {r["status"]: r["n"] for r in statuses} == {"EXPIRED": SKUS * PER_SKU}
        rows = await pool.fetch("SELECT sku, available, held, sold FROM inventory.products "
                                "WHERE sku = ANY($1::text[])", skus)
        assert {(r["available"], r["held"], r["sold"]) for r in rows} == {(PER_SKU, 0, 0)}
        for sku in hot:  # every holder's unit went back to Redis, once
            assert await gate.counter(sku) == PER_SKU
            assert await client.hlen(holders_key(sku)) == 0
        assert await sweep_holds(pool, gate) == 0
    finally:
        await client.aclose()
        await pool.close()
