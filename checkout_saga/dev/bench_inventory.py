"""``checkout-saga bench inventory``: reservations per second, four ways, in one run.

Every reservation is a ``ReserveStock`` handled exactly as the inventory
service handles it (``CommandService.execute``: inbox row, stock change, hold,
reply in the outbox, one transaction), by many concurrent clients:

- ``cold``: carts spread over many SKUs (no row is contended);
- ``hot, PostgreSQL guard``: one SKU, ``UPDATE ... WHERE available >= n``;
- ``hot, SELECT FOR UPDATE``: one SKU, lock the row, check, update (the seed's
  first design, and the baseline every ratio is taken against);
- ``hot, Redis gate``: one SKU marked hot: the Lua check-and-decrement first,
  then the same guarded UPDATE for the carts it admits.

The hot runs oversubscribe the SKU (by default ten requests per unit), as a
Black Friday launch does. The run works in a scratch database of its own on
the given (or an embedded) PostgreSQL, so live data is never touched, and
drops it afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio
import typer
from rich.console import Console
from rich.table import Table

from checkout_saga import bootstrap, endpoints
from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.output import print_json
from messaging.db import migrate
from messaging.outbox import KeptOutbox
from messaging.service import CommandService, Outcome, Route, failed, ok
from messaging.settings import Settings
from schemas.contract import LineItem
from schemas.internal import Command, ReserveStock
from services.inventory import admin, schema, store
from services.inventory.handlers import InventoryHandlers
from services.inventory.hot import HotConfig
from services.inventory.redis_gate import RedisStockGate
from services.inventory.rules import Line, check_cart, out_of_stock

console = Console()
BASELINE = "hot, SELECT FOR UPDATE"
PRICE = 1000
HOLD_TTL = 900.0


@dataclass
class Result:
    scenario: str
    attempts: int
    held: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    ratio: float = 0.0


async def reserve_for_update(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    """The seed's first design, kept only as the baseline: lock, check, update."""
    assert isinstance(cmd, ReserveStock)
    lines = [Line(i.sku, i.quantity, i.unit_price) for i in cmd.items]
    rows = await conn.fetch(
        "SELECT sku, price, available FROM inventory.products WHERE sku = ANY($1::text[]) "
        "ORDER BY sku FOR UPDATE", [line.sku for line in lines])
    rejection = check_cart(lines, {r["sku"]: r["price"] for r in rows})
    if rejection is None:
        available = {r["sku"]: r["available"] for r in rows}
        if any(available[line.sku] < line.quantity for line in lines):
            rejection = out_of_stock(lines, available)
    if rejection is not None:
        return Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))
    for line in lines:
        await conn.execute(
            "UPDATE inventory.products SET available = available - $2, held = held + $2 "
            "WHERE sku = $1", line.sku, line.quantity)
    await store.add_holds(conn, cmd.checkout_session_id, lines, HOLD_TTL)
    return Outcome(ok(cmd))


async def _drive(service: CommandService, skus: list[str], attempts: int,
                 concurrency: int) -> tuple[float, list[float]]:
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    next_i = iter(range(attempts))

    async def client() -> None:
        for i in next_i:
            cmd = ReserveStock(checkout_session_id=f"bench-{run}-{i}", hold_ttl_seconds=HOLD_TTL,
                               items=[LineItem(sku=skus[i % len(skus)], quantity=1, unit_price=PRICE)])
            t0 = time.perf_counter()
            await service.execute(cmd)
            latencies.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _scenario(name: str, pool: asyncpg.Pool, routes: Mapping[type[Command], Route],
                    skus: list[str], attempts: int, concurrency: int) -> Result:
    service = CommandService("inventory", pool, routes, KeptOutbox())
    seconds, latencies = await _drive(service, skus, attempts, concurrency)
    held = await pool.fetchval(
        "SELECT coalesce(sum(held), 0) FROM inventory.products WHERE sku = ANY($1::text[])", skus)
    return Result(name, attempts, int(held), round(seconds, 3), round(attempts / seconds, 1),
                  round(_percentile(latencies, 0.5), 2), round(_percentile(latencies, 0.99), 2))


async def run_bench(settings: Settings, attempts: int, units: int, concurrency: int,
                    cold_skus: int) -> dict[str, Any]:
    admin_dsn = settings.dsn_for("inventory")
    name = f"checkout_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    client: Any = redis.asyncio.from_url(str(settings.redis_url))
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    assert pool is not None
    gate = RedisStockGate(client)
    prefix = f"BENCH-{uuid.uuid4().hex[:6]}"
    hot_skus: list[str] = []
    try:
        await migrate(pool, schema.SCHEMA, schema.DDL)
        # The cold run pays for automatic hot detection as production does (its
        # SKUs stay far below the threshold); the hot runs are marked by hand.
        no_auto = HotConfig(threshold=0)

        async def seed(skus: list[str], each: int, hot: bool = False) -> list[str]:
            async with pool.acquire() as c:
                for sku in skus:
                    await store.set_stock(c, sku, PRICE, each)
                    if hot:
                        await admin.mark_hot(c, gate, sku, True)
                        hot_skus.append(sku)
            return skus

        plain = InventoryHandlers(None, no_auto).routes()
        gated = InventoryHandlers(gate, no_auto).routes()
        for_update = {ReserveStock: Route(reserve_for_update)}
        plans: list[tuple[str, Mapping[type[Command], Route], list[str]]] = [
            ("cold", InventoryHandlers(gate, HotConfig()).routes(), await seed([f"{prefix}-COLD-{i}" for i in range(cold_skus)], attempts)),
            ("hot, PostgreSQL guard", plain, await seed([f"{prefix}-PG"], units)),
            (BASELINE, for_update, await seed([f"{prefix}-FU"], units)),
            ("hot, Redis gate", gated, await seed([f"{prefix}-REDIS"], units, hot=True)),
        ]
        # Warm up (connections, prepared statements, scripts) on SKUs nobody measures.
        warm = await seed([f"{prefix}-WARM"], attempts, hot=True)
        await _scenario("warm-up", pool, gated, warm, min(attempts, 20 * concurrency), concurrency)
        results = [await _scenario(label, pool, routes, skus, attempts, concurrency)
                   for label, routes, skus in plans]
        base = next(r.per_second for r in results if r.scenario == BASELINE)
        for r in results:
            r.ratio = round(r.per_second / base, 2) if base else 0.0
        return {
            "attempts_per_run": attempts, "hot_units": units, "concurrency": concurrency,
            "cold_skus": cold_skus, "baseline": BASELINE,
            "results": [asdict(r) for r in results],
        }
    finally:
        await pool.close()
        for sku in hot_skus:
            await gate.drop(sku)
        await client.aclose()
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def render(report: dict[str, Any]) -> None:
    table = Table("scenario", "requests", "held", "s", "reserv./s", "p50 ms", "p99 ms", "x base", title=f"checkout-saga bench inventory ({report['concurrency']} clients, "
                  f"{report['hot_units']} hot units)")
    for r in report["results"]:
        table.add_row(r["scenario"], str(r["attempts"]), str(r["held"]), str(r["seconds"]),
                      str(r["per_second"]), str(r["p50_ms"]), str(r["p99_ms"]), f"{r['ratio']:.2f}")
    console.print(table)
    console.print(f"baseline: {report['baseline']}; every run is {report['attempts_per_run']} "
                  "ReserveStock commands through the inventory service's transaction.")


def inventory(
    attempts: int = typer.Option(4000, "--attempts", min=10, help="Reservation requests per run."),
    units: int = typer.Option(400, "--units", min=1, help="Units of the hot SKU in each hot run."),
    concurrency: int = typer.Option(32, "--concurrency", min=1, max=200, help="Concurrent clients."),
    cold_skus: int = typer.Option(500, "--cold-skus", min=1, help="SKUs the cold run spreads over."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Reservations per second: cold SKUs, and one hot SKU three ways (ratios to FOR UPDATE)."""
    settings = endpoints.resolve(Settings())
    stack = EmbeddedStack(settings.checkout_data_dir / "bench-inventory-stack")
    try:
        # No broker is needed: a placeholder keeps the stack from starting one.
        found = stack.start(kafka=settings.kafka_bootstrap_servers or "unused:0",
                            database=settings.database_url or settings.inventory_database_url,
                            redis=settings.redis_url)
        settings = settings.model_copy(update={
            "database_url": settings.database_url or found.database_url,
            "redis_url": found.redis_url})
        report = bootstrap.run(run_bench(settings, attempts, units, concurrency, cold_skus))
    finally:
        stack.stop()
    if as_json:
        print_json(report)
    else:
        render(report)

