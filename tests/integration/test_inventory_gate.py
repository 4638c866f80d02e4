"""The hot-SKU gate against real PostgreSQL and Redis, through the inventory
handlers as the service runs them (one transaction per command).

Each test works in its own scratch database, so no session worker sweeps or
reconciles its rows while it looks; Redis keys are per SKU and SKUs are unique.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from helpers import uid

from messaging.db import migrate
from schemas.contract import LineItem
from schemas.internal import CommitStock, ReleaseStock, ReserveStock
from services.inventory import admin, schema, store
from services.inventory.handlers import InventoryHandlers
from services.inventory.hot import HotConfig
from services.inventory.redis_gate import RedisStockGate, holders_key, stock_key
from services.inventory.rules import Line
from services.inventory.timers import reconcile_hot, sweep_holds


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await asyncpg.create_pool(await scratch_database(), min_size=1, max_size=8)
    assert p is not None
    await migrate(p, schema.SCHEMA, schema.DDL)
    yield p
    await p.close()


@pytest.fixture
async def client(stack) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    c = redis.asyncio.from_url(stack.env["REDIS_URL"])
    yield c
    await c.aclose()


@pytest.fixture
def gate(client: Any) -> RedisStockGate:
    return RedisStockGate(client)


async def product(pool: asyncpg.Pool, units: int, hot: bool = True, price: int = 100) -> str:
    sku = uid("HOT" if hot else "COLD")
    async with pool.acquire() as conn:
        await store.set_stock(conn, sku, price, units)
        await store.set_hot(conn, sku, hot)
    return sku


async def row(pool: asyncpg.Pool, sku: str) -> dict[str, Any]:
    found = await pool.fetchrow(
        "SELECT available, held, sold, hot FROM inventory.products WHERE sku = $1", sku)
    assert found is not None
    return dict(found)


async def reserve(pool: asyncpg.Pool, h: InventoryHandlers, sid: str,
                  items: list[tuple[str, int]], ttl: float = 900) -> Any:
    cmd = ReserveStock(checkout_session_id=sid, hold_ttl_seconds=ttl,
                       items=[LineItem(sku=s, quantity=q, unit_price=100) for s, q in items])
    async with pool.acquire() as conn, conn.transaction():
        return (await h.reserve_stock(conn, cmd)).reply


async def holds_of(pool: asyncpg.Pool, sku: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM inventory.holds WHERE sku = $1", sku))


async def test_a_refused_cart_never_touches_the_row(pool, gate, client) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 10)
    await client.hset(stock_key(sku), mapping={"available": 0, "version": 1})  # Redis: sold out
    h = InventoryHandlers(gate)
    # Another transaction holds the product row: any UPDATE of it would wait
    # for the lock and hit lock_timeout; a refusal in Redis must not wait.
    locker = await pool.acquire()
    tx = locker.transaction()
    await tx.start()
    await locker.execute("SELECT 1 FROM inventory.products WHERE sku = $1 FOR UPDATE", sku)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '1s'")
            reply = (await h.reserve_stock(conn, ReserveStock(
                checkout_session_id=uid("cs"), hold_ttl_seconds=900,
                items=[LineItem(sku=sku, quantity=1, unit_price=100)]))).reply
    finally:
        await tx.rollback()
        await pool.release(locker)
    assert reply.ok is False and reply.reason == "OUT_OF_STOCK" and reply.skus == [sku]
    assert "0 left" in (reply.detail or "")
    assert (await row(pool, sku))["available"] == 10
    assert await holds_of(pool, sku) == 0


async def test_all_hot_lines_or_none_and_once_per_session(pool, gate) -> None:  # type: ignore[no-untyped-def]
    a, b = await product(pool, 5), await product(pool, 1)
    h = InventoryHandlers(gate)
    first = await reserve(pool, h, uid("cs"), [(a, 2), (b, 1)])
    assert first.ok
    assert (await gate.counter(a), await gate.counter(b)) == (3, 0)
    # b is gone: the second cart takes nothing of a either (restored in the script)
    refused = await reserve(pool, h, uid("cs"), [(a, 2), (b, 1)])
    assert refused.reason == "OUT_OF_STOCK" and refused.skus == [b]
    assert (await gate.counter(a), await gate.counter(b)) == (3, 0)
    assert (await row(pool, a))["held"] == 2
    # A retried admission of the same session takes nothing more.
    sid = uid("cs")
    assert (await gate.admit(sid, [store_line(a, 1)])).admission == "ADMITTED"
    assert (await gate.admit(sid, [store_line(a, 1)])).admission == "ADMITTED"
    assert await gate.counter(a) == 2
    assert await gate.give_back([(sid, a)]) == 1 and await gate.give_back([(sid, a)]) == 0
    assert await gate.counter(a) == 3


def store_line(sku: str, quantity: int) -> Line:
    return Line(sku, quantity, 100)


async def test_postgres_has_the_last_word_and_units_go_back(pool, gate, client) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 1)
    h = InventoryHandlers(gate)
    await client.hset(stock_key(sku), mapping={"available": 5, "version": 1})  # Redis drifted high
    assert (await reserve(pool, h, uid("cs"), [(sku, 1)])).ok
    refused = await reserve(pool, h, uid("cs"), [(sku, 1)])
    assert refused.reason == "OUT_OF_STOCK"
    snapshot, _ = await gate.snapshot(sku)
    assert snapshot.counter == 4  # 5 less the held unit; the refused one came back
    assert [hl.quantity for hl in snapshot.holders] == [1]
    assert (await row(pool, sku))["held"] == 1


async def test_a_missing_counter_is_rebuilt_from_postgres(pool, gate, client) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 7)
    h = InventoryHandlers(gate)
    assert (await reserve(pool, h, uid("cs"), [(sku, 2)])).ok
    await client.delete(stock_key(sku), holders_key(sku))  # as after a Redis restart
    assert (await reserve(pool, h, uid("cs"), [(sku, 3)])).ok
    assert await gate.counter(sku) == 2  # rebuilt at 5 from PostgreSQL, then 3 taken
    assert (await row(pool, sku))["available"] == 2


async def test_release_gives_back_once_and_commit_sells(pool, gate) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 4)
    h = InventoryHandlers(gate)
    released, sold = uid("cs"), uid("cs")
    assert (await reserve(pool, h, released, [(sku, 2)])).ok
    assert (await reserve(pool, h, sold, [(sku, 1)])).ok
    assert await gate.counter(sku) == 1
    for _ in range(2):  # a repeated compensation gives nothing more back
        async with pool.acquire() as conn, conn.transaction():
            await h.release_stock(conn, ReleaseStock(checkout_session_id=released))
    assert await gate.counter(sku) == 3
    async with pool.acquire() as conn, conn.transaction():
        reply = (await h.commit_stock(conn, CommitStock(
            checkout_session_id=sold, items=[LineItem(sku=sku, quantity=1, unit_price=100)]))).reply
    assert reply.ok and reply.data["rehold"] == []
    assert await gate.counter(sku) == 3
    assert (await gate.snapshot(sku))[0].holders == ()
    assert await row(pool, sku) == {"available": 3, "held": 0, "sold": 1, "hot": True}


async def expire(pool: asyncpg.Pool, sid: str) -> None:
    await pool.execute("UPDATE inventory.holds SET expires_at = now() - interval '1 second' "
                       "WHERE checkout_session_id = $1", sid)


async def test_commit_after_expiry_retakes_through_the_gate_or_fails(pool, gate) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 2)
    h = InventoryHandlers(gate)
    lucky, unlucky, thief = uid("cs"), uid("cs"), uid("cs")
    assert (await reserve(pool, h, lucky, [(sku, 1)])).ok
    assert (await reserve(pool, h, unlucky, [(sku, 1)])).ok
    await expire(pool, lucky)
    await expire(pool, unlucky)
    assert await sweep_holds(pool, gate) >= 2
    assert await gate.counter(sku) == 2 and (await row(pool, sku))["available"] == 2

    items = [LineItem(sku=sku, quantity=1, unit_price=100)]
    async with pool.acquire() as conn, conn.transaction():
        ok = (await h.commit_stock(conn, CommitStock(checkout_session_id=lucky, items=items))).reply
    assert ok.ok and ok.data["rehold"] == [sku]
    assert (await reserve(pool, h, thief, [(sku, 1)])).ok  # the last unit goes elsewhere
    async with pool.acquire() as conn, conn.transaction():
        late = (await h.commit_stock(conn, CommitStock(checkout_session_id=unlucky, items=items))).reply
    assert late.ok is False and late.reason == "OUT_OF_STOCK" and late.skus == [sku]
    assert (late.detail or "").startswith("The hold expired during payment")
    assert await row(pool, sku) == {"available": 0, "held": 1, "sold": 1, "hot": True}
    assert await gate.counter(sku) == 0
    holders = {hl.session_id for hl in (await gate.snapshot(sku))[0].holders}
    assert holders == {thief}


async def test_a_busy_cold_sku_turns_hot(pool, gate) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 100, hot=False)
    h = InventoryHandlers(gate, HotConfig(threshold=5, window_seconds=30))
    for _ in range(4):
        assert (await reserve(pool, h, uid("cs"), [(sku, 1)])).ok
    assert (await row(pool, sku))["hot"] is False and await gate.counter(sku) is None
    assert (await reserve(pool, h, uid("cs"), [(sku, 1)])).ok  # the 5th in the window
    assert (await row(pool, sku))["hot"] is True
    assert (await reserve(pool, h, uid("cs"), [(sku, 1)])).ok  # now gated: counter built
    assert await gate.counter(sku) == 94
    assert (await row(pool, sku))["available"] == 94


async def test_reconcile_corrects_drift_but_respects_units_in_flight(pool, gate, client) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 10)
    h = InventoryHandlers(gate)
    assert (await reserve(pool, h, uid("cs"), [(sku, 2)])).ok  # held: counter 8, available 8
    in_flight = uid("cs")
    assert (await gate.admit(in_flight, [store_line(sku, 3)])).admission == "ADMITTED"  # counter 5
    await client.hincrby(stock_key(sku), "available", 40)  # drift: 45
    results = {r.sku: r for r in await reconcile_hot(pool, gate)}
    assert results[sku].counter == 45 and results[sku].expected == 5 and results[sku].drift == -40
    assert await gate.counter(sku) == 5  # 8 available less 3 in flight
    again = {r.sku: r for r in await reconcile_hot(pool, gate)}
    assert again[sku].drift == 0
    await client.delete(stock_key(sku), holders_key(sku))
    await reconcile_hot(pool, gate)
    assert await gate.counter(sku) == 8  # rebuilt from PostgreSQL
    # A holder whose hold ended long ago without a give-back gets it now.
    ended = uid("cs")
    assert (await reserve(pool, h, ended, [(sku, 1)])).ok
    await pool.execute("UPDATE inventory.holds SET status = 'EXPIRED', ended_at = now() - "
                       "interval '1 hour' WHERE checkout_session_id = $1", ended)
    await pool.execute("UPDATE inventory.products SET held = held - 1, available = available + 1 "
                       "WHERE sku = $1", sku)
    await reconcile_hot(pool, gate)
    assert await gate.counter(sku) == 8
    assert ended not in {hl.session_id for hl in (await gate.snapshot(sku))[0].holders}


async def test_operator_marks_and_shows(pool, gate) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 6, hot=False)
    async with pool.acquire() as conn:
        assert await admin.mark_hot(conn, gate, sku, True)
        shown = await admin.show(conn, gate, sku)
        assert shown is not None and shown["hot"] is True and shown["redis_available"] == 6
        assert await admin.mark_hot(conn, gate, sku, False)
        shown = await admin.show(conn, gate, sku)
        assert shown is not None and shown["hot"] is False and shown["redis_available"] is None
        assert not await admin.mark_hot(conn, gate, uid("NOPE"), True)


async def test_concurrent_hot_carts_never_oversell(pool, gate) -> None:  # type: ignore[no-untyped-def]
    sku = await product(pool, 25)
    h = InventoryHandlers(gate)
    replies = await asyncio.gather(*(reserve(pool, h, uid("cs"), [(sku, 1)]) for _ in range(200)))
    assert sum(r.ok for r in replies) == 25
    assert await row(pool, sku) == {"available": 0, "held": 25, "sold": 0, "hot": True}
    assert await gate.counter(sku) == 0
