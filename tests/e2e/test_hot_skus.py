"""Inventory at Black Friday scale, through the topics, the CLI and real workers:
a hot SKU stampede (also across a Redis restart), carts over overlapping SKUs,
and a hold that expires while payment is pending.

The first test drives the operator side through the CLI; the others call the
same functions the CLI calls (``services.inventory.admin``) in-process, since a
CLI start costs about a second and the suite has a time budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import redis.asyncio
from conftest import Stack, Workers
from helpers import Bus, checkout_event, cli, cli_json, uid

from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.ops.supervisor import settings_env
from checkout_saga.runtime import ROLES
from saga import queries as saga_queries
from schemas.contract import LineItem
from schemas.internal import ReserveStock
from services.inventory import admin, store
from services.inventory.handlers import InventoryHandlers
from services.inventory.redis_gate import RedisStockGate, holders_key

PRICE = 1500
T = TypeVar("T")


async def _with_books(env: dict[str, str], fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    conn = await asyncpg.connect(env["DATABASE_URL"])
    client: Any = redis.asyncio.from_url(env["REDIS_URL"])
    try:
        return await fn(conn, RedisStockGate(client))
    finally:
        await client.aclose()
        await conn.close()


async def abooks(env: dict[str, str], fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """``fn(conn, gate)`` on the deployment's PostgreSQL and Redis."""
    return await _with_books(env, fn)


def books(env: dict[str, str], fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """The same from a plain (sync) test: on its own thread and loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _with_books(env, fn)).result()


async def _stock(conn: Any, gate: Any, sku: str, units: int, hot: bool) -> None:
    await store.set_stock(conn, sku, PRICE, units)
    if hot:
        assert await admin.mark_hot(conn, gate, sku, True)


def show(env: dict[str, str], sku: str) -> dict[str, Any]:
    found = books(env, lambda conn, gate: admin.show(conn, gate, sku))
    assert found is not None
    return found


def results_of(bus: Bus, sessions: list[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    found = bus.wait_for("checkout.results", sessions, timeout)
    missing = [s for s, events in found.items() if not events]
    assert not missing, f"{len(missing)} checkouts never ended, e.g. {missing[:3]}"
    return {s: events[0] for s, events in found.items()}


def stampede(bus: Bus, sku: str, n: int) -> list[str]:
    sessions = [uid("hot") for _ in range(n)]
    for sid in sessions:
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, PRICE)]))
    bus.flush()
    return sessions


def assert_sold_exactly(results: dict[str, dict[str, Any]], units: int) -> None:
    succeeded = [e for e in results.values() if e["type"] == "CheckoutSucceeded"]
    failed = [e for e in results.values() if e["type"] == "CheckoutFailed"]
    assert len(succeeded) == units
    assert {e["data"]["reason"] for e in failed} == {"OUT_OF_STOCK"}
    assert len(succeeded) + len(failed) == len(results)


def settled_stock(env: dict[str, str], sku: str, timeout: float = 20.0) -> dict[str, Any]:
    """The stock once the reconcile has brought Redis in line with PostgreSQL."""
    end = time.monotonic() + timeout
    while True:
        shown = show(env, sku)
        if shown["redis_available"] == shown["available"] or time.monotonic() > end:
            return shown  # type: ignore[no-any-return]
        time.sleep(0.5)


def test_a_thousand_checkouts_for_a_hot_sku_sell_exactly_its_stock(workers, bus: Bus, env) -> None:
    sku = uid("HOT")
    cli(env, "stock", "set", sku, "--price", str(PRICE), "--quantity", "100")
    marked = cli_json(env, "stock", "hot", sku, "--on")
    assert (marked["hot"], marked["redis_available"]) == (True, 100)

    results = results_of(bus, stampede(bus, sku, 1000))

    assert_sold_exactly(results, 100)
    shown = cli_json(env, "stock", "show", sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (0, 0, 100)
    assert (shown["hot"], shown["redis_available"]) == (True, 0)


def test_a_redis_restart_mid_stampede_neither_oversells_nor_loses_the_gate(
    workers, bus: Bus, env, stack: Stack
) -> None:
    if "redis" not in stack.servers.started:
        pytest.skip("Redis is not ours to restart (REDIS_URL given)")
    sku = uid("HOT")
    books(env, lambda conn, gate: _stock(conn, gate, sku, 100, hot=True))

    before = log_sizes(stack)
    sessions = stampede(bus, sku, 1000)
    end = time.monotonic() + 60
    while len([e for e in bus.wait_for("checkout.results", sessions, 0.1).values() if e]) < 150:
        assert time.monotonic() < end, "the stampede did not get going"
    stack.servers.restart_redis()  # every counter and holder is gone
    results = results_of(bus, sessions)

    assert_sold_exactly(results, 100)
    shown = settled_stock(env, sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (0, 0, 100)
    assert shown["redis_available"] == 0  # rebuilt from PostgreSQL, then reconciled
    rebuilt = [line for line in new_log_text(stack, before).splitlines()
               if "rebuilt from PostgreSQL" in line and sku in line]
    assert rebuilt, "no worker rebuilt the counter after the restart"


def log_sizes(stack: Stack) -> dict[Path, int]:
    return {p: p.stat().st_size for p in stack.workdir.glob("worker-*.log")}


def new_log_text(stack: Stack, before: dict[Path, int]) -> str:
    text = []
    for path in stack.workdir.glob("worker-*.log"):
        with path.open("rb") as fh:
            fh.seek(before.get(path, 0))
            text.append(fh.read().decode("utf-8", "replace"))
    return "\n".join(text)


CARTS, UNITS = 200, 25


def test_carts_over_overlapping_skus_never_deadlock_or_oversell(
    workers, bus: Bus, env, stack: Stack
) -> None:
    skus = [uid(f"MIX{i}") for i in range(6)]
    for i, sku in enumerate(skus):  # two gated in Redis, four straight to PostgreSQL
        books(env, lambda conn, gate, sku=sku, i=i: _stock(conn, gate, sku, UNITS, hot=i < 2))
    rng = random.Random(3)
    carts: dict[str, list[tuple[str, int, int]]] = {}
    for _ in range(CARTS):
        picked = rng.sample(skus, rng.randint(2, 4))  # lines in random order: rows in SKU order
        carts[uid("mix")] = [(sku, rng.randint(1, 2), PRICE) for sku in picked]
    before = log_sizes(stack)
    for sid, items in carts.items():
        bus.send("checkout.requested", sid, checkout_event(sid, items))
    bus.flush()
    results = results_of(bus, list(carts))

    sold_by_cart = {sku: 0 for sku in skus}
    for sid, event in results.items():
        if event["type"] == "CheckoutSucceeded":
            for sku, qty, _ in carts[sid]:
                sold_by_cart[sku] += qty
        else:
            assert event["data"]["reason"] == "OUT_OF_STOCK", event
    assert 0 < sum(e["type"] == "CheckoutSucceeded" for e in results.values()) < len(carts)
    for sku in skus:
        shown = settled_stock(env, sku) if sku in skus[:2] else show(env, sku)
        assert shown["held"] == 0 and shown["sold"] == sold_by_cart[sku] <= UNITS, shown
        assert shown["available"] + shown["sold"] == UNITS
        if sku in skus[:2]:
            assert shown["redis_available"] == shown["available"]
    log = new_log_text(stack, before).lower()
    assert "deadlock" not in log


# ---- a hold that expires during payment ----------------------------------------------
#
# Deterministic by construction, not by timing: a private checkout deployment
# (its own broker and database, the session's Redis) runs every role except
# payment, with 1-second holds. Each checkout stops at AuthorizePayment, which
# nobody consumes, while the sweeper expires its hold; the test then lets
# another buyer take one of the released units and only then starts a payment
# worker. The payment timeout is 60 s, far beyond the test.


@pytest.fixture
async def private_deployment(stack: Stack, scratch_database, tmp_path: Path):  # type: ignore[no-untyped-def]
    broker = EmbeddedStack(tmp_path / "broker")
    found = broker.start(database=stack.env["DATABASE_URL"], redis=stack.env["REDIS_URL"])
    group = Workers(stack)
    env = dict(stack.env)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=found.kafka_bootstrap,
        DATABASE_URL=await scratch_database(),
        CHECKOUT_DATA_DIR=str(tmp_path / "data"),
        CHECKOUT_HOLD_TTL_SECONDS="1",
        CHECKOUT_SWEEP_INTERVAL_SECONDS="0.2",
        CHECKOUT_PAYMENT_TIMEOUT_SECONDS="60",
    )
    env.update(settings_env(found.kafka_bootstrap, env["DATABASE_URL"], env["REDIS_URL"],
                            broker.client_settings))
    try:
        yield env, group
    finally:
        group.stop_all()
        broker.stop()


async def wait_for_status(dsn: str, sessions: list[str], status: str, timeout: float = 60.0) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        end = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM inventory.holds WHERE checkout_session_id = ANY($1::text[]) "
            "AND status = $2", sessions, status) < len(sessions):
            assert time.monotonic() < end, f"holds of {sessions} not {status} in {timeout}s"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _prepared(conn: Any, timeout: float = 60.0) -> None:
    """``up`` creates the topics, then the schemas: wait for the inventory's."""
    end = time.monotonic() + timeout
    while not await conn.fetchval("SELECT to_regclass('inventory.holds') IS NOT NULL"):
        assert time.monotonic() < end, "the private deployment never prepared its database"
        await asyncio.sleep(0.1)


async def test_a_hold_that_expires_during_payment(private_deployment) -> None:  # type: ignore[no-untyped-def]
    env, group = private_deployment
    group.start(*[r for r in ROLES if r != "payment"], **env)
    cold, hot = uid("EXP"), uid("EXPHOT")
    await abooks(env, lambda conn, gate: _prepared(conn))
    await abooks(env, lambda conn, gate: _stock(conn, gate, cold, 1, hot=False))
    await abooks(env, lambda conn, gate: _stock(conn, gate, hot, 1, hot=True))
    rehold, lost = uid("cs"), uid("cs")
    bus = Bus(env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        bus.send("checkout.requested", rehold, checkout_event(rehold, [(cold, 1, PRICE)]))
        bus.send("checkout.requested", lost, checkout_event(lost, [(hot, 1, PRICE)]))
        bus.flush()
        # Both holds are taken, then expire and are swept while payment waits.
        await wait_for_status(env["DATABASE_URL"], [rehold, lost], "EXPIRED")
        for sid in (rehold, lost):  # ... and each saga is still waiting for its payment
            saga = await abooks(env, lambda conn, gate, sid=sid: saga_queries.show(conn, sid))
            assert saga["status"] == "RUNNING"
            logged = [(s["step"], s["kind"]) for s in saga["steps"]]
            assert ("authorize_payment", "command") in logged
            assert ("authorize_payment", "succeeded") not in logged
            assert not any(step == "commit_stock" for step, _ in logged)
        # Another buyer takes the hot unit that the expiry released (through the gate).
        client: Any = redis.asyncio.from_url(env["REDIS_URL"])
        pool = await asyncpg.create_pool(env["DATABASE_URL"], min_size=1, max_size=2)
        try:
            thief = uid("cs")
            async with pool.acquire() as conn, conn.transaction():
                taken = await InventoryHandlers(RedisStockGate(client)).reserve_stock(conn, ReserveStock(
                    checkout_session_id=thief, hold_ttl_seconds=900,
                    items=[LineItem(sku=hot, quantity=1, unit_price=PRICE)]))
            assert taken.reply is not None and taken.reply.ok

            group.start("payment", **env)  # now payment answers, long after the holds expired
            results = await asyncio.to_thread(results_of, bus, [rehold, lost], 60.0)

            assert results[rehold]["type"] == "CheckoutSucceeded", results[rehold]
            assert results[lost]["type"] == "CheckoutFailed"
            assert results[lost]["data"]["reason"] == "OUT_OF_STOCK"
            assert "expired during payment" in results[lost]["data"]["detail"]
            cold_row = await abooks(env, lambda conn, gate: admin.show(conn, gate, cold))
            assert (cold_row["available"], cold_row["held"], cold_row["sold"]) == (0, 0, 1)
            hot_row = await abooks(env, lambda conn, gate: admin.show(conn, gate, hot))
            assert (hot_row["available"], hot_row["held"], hot_row["sold"]) == (0, 1, 0)
            assert hot_row["redis_available"] == 0
            assert {k.decode() for k in await client.hkeys(holders_key(hot))} == {thief}
            saga = await abooks(env, lambda conn, gate: saga_queries.show(conn, lost))
            kinds = {(s["step"], s["kind"]) for s in saga["steps"]}
            assert ("commit_stock", "failed") in kinds and ("authorize_payment", "compensated") in kinds
            voided = await pool.fetchval(
                "SELECT status FROM payment.payments WHERE checkout_session_id = $1", lost)
            assert voided == "VOIDED"
        finally:
            await pool.close()
            await client.aclose()
    finally:
        bus.close()
