"""The operator command line: ``checkout-saga``."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional, TypeVar

import typer
import uvloop
from rich.console import Console
from rich.table import Table

from checkout_saga import endpoints
from checkout_saga.db import create_pool, migrate
from checkout_saga.runtime import DDL, ROLES, Runtime
from checkout_saga.settings import Settings
from checkout_saga.stack import EmbeddedStack
from saga import queries as saga_queries
from services.inventory import store as inventory_store
from services.orders import store as orders_store

app = typer.Typer(help="Checkout saga orchestrator: operator commands.", no_args_is_help=True)
stock_app = typer.Typer(help="Products, prices and stock.", no_args_is_help=True)
saga_app = typer.Typer(help="Inspect sagas.", no_args_is_help=True)
order_app = typer.Typer(help="Inspect orders.", no_args_is_help=True)
app.add_typer(stock_app, name="stock")
app.add_typer(saga_app, name="saga")
app.add_typer(order_app, name="order")

console = Console()
err = Console(stderr=True)
T = TypeVar("T")
JSON_OPT = typer.Option(False, "--json", help="Print JSON for scripts.")


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[no-any-return, arg-type]


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.checkout_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def settings_for_command() -> Settings:
    settings = endpoints.resolve(Settings())
    if not settings.database_url and not settings.inventory_database_url:
        err.print("[red]No database: set DATABASE_URL, or start `checkout-saga up` first.[/red]")
        raise typer.Exit(2)
    return settings


async def with_pool(settings: Settings, schema: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    pool = await create_pool(settings.dsn_for(schema), 2)
    try:
        await migrate(pool, schema, DDL[schema])
        async with pool.acquire() as conn:
            return await fn(conn)
    finally:
        await pool.close()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")


# ---- up ----------------------------------------------------------------------


@app.command()
def up(
    role: list[str] = typer.Option(list(ROLES), "--role", help="Roles to run (repeatable)."),
) -> None:
    """Start the workers (and embedded servers where no URL is set); serve until stopped."""
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        err.print(f"[red]Unknown role(s) {', '.join(unknown)}; choose from {', '.join(ROLES)}.[/red]")
        raise typer.Exit(2)
    settings = Settings()
    setup_logging(settings)
    stack = EmbeddedStack(settings.checkout_data_dir / "stack")
    try:
        settings = start_stack(settings, stack)
        run(serve(settings, tuple(role)))
    finally:
        endpoints.remove(settings) if stack.started else None
        stack.stop()


def start_stack(settings: Settings, stack: EmbeddedStack) -> Settings:
    found = stack.start(
        kafka=settings.kafka_bootstrap_servers,
        database=settings.database_url,
        redis=settings.redis_url,
    )
    settings = endpoints.with_embedded(settings, found, stack.started)
    if stack.started:
        path = endpoints.write(settings, found)
        err.print(f"embedded {', '.join(sorted(stack.started))} started; endpoints in {path}")
    return settings


async def serve(settings: Settings, roles: tuple[str, ...]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Runtime(settings, roles).run(stop)


# ---- stock -------------------------------------------------------------------


@stock_app.command("set")
def stock_set(
    sku: str,
    price: int = typer.Option(..., "--price", min=0, help="Price in minor units (cents)."),
    quantity: int = typer.Option(0, "--quantity", min=0, help="Units to add to stock."),
    as_json: bool = JSON_OPT,
) -> None:
    """Set a SKU's price and add QUANTITY units to its stock."""
    settings = settings_for_command()

    async def go(conn: Any) -> Any:
        await inventory_store.set_stock(conn, sku, price, quantity)
        return await inventory_store.show(conn, sku)

    show_stock(run(with_pool(settings, "inventory", go)), as_json)


@stock_app.command("import")
def stock_import(path: Path, as_json: bool = JSON_OPT) -> None:
    """Import a CSV with columns sku,price,quantity."""
    settings = settings_for_command()
    rows: list[tuple[str, int, int]] = []
    with path.open(newline="") as fh:
        for n, rec in enumerate(csv.DictReader(fh), start=2):
            try:
                sku, price, qty = rec["sku"].strip(), int(rec["price"]), int(rec["quantity"])
                if not sku or price < 0 or qty < 0:
                    raise ValueError("empty sku or negative number")
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                err.print(f"[red]{path}:{n}: bad row ({exc}); nothing imported.[/red]")
                raise typer.Exit(2)
            rows.append((sku, price, qty))

    async def go(conn: Any) -> int:
        async with conn.transaction():
            for sku, price, qty in rows:
                await inventory_store.set_stock(conn, sku, price, qty)
        return len(rows)

    count = run(with_pool(settings, "inventory", go))
    print_json({"imported": count}) if as_json else console.print(f"imported {count} SKUs")


@stock_app.command("show")
def stock_show(sku: str, as_json: bool = JSON_OPT) -> None:
    """Show a SKU's price and stock: available, held, sold."""
    settings = settings_for_command()
    row = run(with_pool(settings, "inventory", lambda conn: inventory_store.show(conn, sku)))
    if row is None:
        err.print(f"[red]Unknown SKU {sku}.[/red]")
        raise typer.Exit(1)
    show_stock(row, as_json)


def show_stock(row: Any, as_json: bool) -> None:
    if as_json:
        print_json(row)
        return
    table = Table(title=f"stock {row['sku']}")
    for key in row:
        table.add_column(key)
    table.add_row(*(str(v) for v in row.values()))
    console.print(table)


# ---- saga / order -----------------------------------------------------------------


@saga_app.command("show")
def saga_show(session_id: str, as_json: bool = JSON_OPT) -> None:
    """A saga's timeline, step by step."""
    settings = settings_for_command()
    found = run(with_pool(settings, "saga", lambda conn: saga_queries.show(conn, session_id)))
    if found is None:
        err.print(f"[red]No saga for checkout session {session_id}.[/red]")
        raise typer.Exit(1)
    if as_json:
        print_json(found)
        return
    console.print(f"[bold]{session_id}[/bold]  status [bold]{found['status']}[/bold]"
                  f"  definition v{found['definition_version']}")
    if found.get("failure"):
        console.print(f"failure: {found['failure']['reason']}: {found['failure']['detail']}")
    table = Table("at", "step", "event", "detail")
    for step in found["steps"]:
        table.add_row(step["at"], step["step"], step["kind"], step["detail"])
    console.print(table)


@order_app.command("show")
def order_show(order_id: str, as_json: bool = JSON_OPT) -> None:
    """An order, its status and its history."""
    settings = settings_for_command()

    async def go(conn: Any) -> Any:
        row = await orders_store.by_id(conn, order_id)
        if row is None:
            return None
        out = dict(row)
        out["items"] = json.loads(out["items"])
        if out["shipping_address"]:
            out["shipping_address"] = json.loads(out["shipping_address"])
        out["history"] = await orders_store.history(conn, order_id)
        return out

    found = run(with_pool(settings, "orders", go))
    if found is None:
        err.print(f"[red]No order {order_id}.[/red]")
        raise typer.Exit(1)
    if as_json:
        print_json(found)
        return
    console.print(f"[bold]{order_id}[/bold]  {found['status']}  total {found['total']} {found['currency']}")
    table = Table("at", "from", "to", "reason")
    for h in found["history"]:
        table.add_row(h["at"], h["from"] or "", h["to"], h["reason"] or "")
    console.print(table)


@app.command()
def demo(
    checkouts: int = typer.Option(300, "--checkouts", min=1, help="How many checkouts to drive."),
    as_json: bool = JSON_OPT,
) -> None:
    """The main job on the embedded stack: seed stock, drive a burst of checkouts, print the outcome."""
    from checkout_saga.demo import run_demo

    run_demo(checkouts, as_json)


def main() -> None:
    app()
