"""The operator command line: ``checkout-saga``."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio
import typer
from rich.console import Console
from rich.table import Table

from checkout_saga import bootstrap, stock_csv
from checkout_saga.bootstrap import run
from checkout_saga.cli import bench as cli_bench
from checkout_saga.cli import console as cli_console
from checkout_saga.cli import observe as cli_observe
from checkout_saga.cli import ops as cli_ops
from checkout_saga.cli import promo as cli_promo
from checkout_saga.cli.common import settings_for_command, with_pool
from checkout_saga.cli.console import OperatorConsole
from checkout_saga.cli.params import file_argument
from checkout_saga.cli.topics import topics_app
from checkout_saga.output import print_json
from checkout_saga.runtime import ROLES, Runtime, hard_stop_after
from messaging import logs, tracing
from messaging.errors import OperatorInputError
from messaging.settings import Settings
from saga import queries as saga_queries
from services.inventory import admin as inventory_admin
from services.inventory import store as inventory_store
from services.inventory.redis_gate import RedisStockGate
from services.orders import store as orders_store

app = typer.Typer(name="checkout-saga", help="Checkout saga orchestrator: operator commands.",
                  no_args_is_help=True,
                  cls=OperatorConsole)
stock_app = typer.Typer(help="Products, prices and stock.", no_args_is_help=True)
saga_app = typer.Typer(help="Inspect sagas.", no_args_is_help=True)
order_app = typer.Typer(help="Inspect orders.", no_args_is_help=True)
app.add_typer(stock_app, name="stock")
app.add_typer(saga_app, name="saga")
app.add_typer(order_app, name="order")
app.add_typer(cli_promo.app, name="promo")
app.add_typer(topics_app, name="topics")
app.add_typer(cli_bench.app, name="bench")
cli_ops.register(app, saga_app)  # verify, replay, dlq, supervise, chaos; saga list/retry/...
cli_observe.register(app, saga_app)  # analytics; saga graph

console = Console()
err = cli_console.err
T = TypeVar("T")
JSON_OPT = typer.Option(False, "--json", help="Print JSON for scripts.")


# ---- up ----------------------------------------------------------------------


@app.command()
def up(
    role: list[str] = typer.Option(list(ROLES), "--role", help="Roles to run (repeatable)."),
    supervise: int = typer.Option(0, "--supervise", min=0,
                                  help="Run N processes of each role and restart any that dies."),
) -> None:
    """Start the workers (and embedded servers where no URL is set); serve until stopped."""
    unknown = sorted(set(role) - set(ROLES))
    if unknown:
        err.print(f"[red]Unknown role(s) {', '.join(unknown)}; choose from {', '.join(ROLES)}.[/red]")
        raise typer.Exit(2)
    if supervise:
        cli_ops.run_supervised(supervise, role)
        return
    settings = bootstrap.operator_settings()
    logs.setup(settings.checkout_log_level, settings.checkout_log_format)  # JSON lines by default
    with bootstrap.serving_stack(settings, err.print) as (settings, _):
        run(serve(settings, tuple(role)))


async def serve(settings: Settings, roles: tuple[str, ...]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Once stopping, the process is gone within the stop timeout (and a
    # little): the runtime's own stop is bounded, this is the backstop.
    backstop = asyncio.create_task(_hard_stop_once_stopping(
        stop, settings.checkout_stop_timeout_seconds + 0.75))
    service = f"checkout-saga-{roles[0]}" if len(roles) == 1 else "checkout-saga"
    tracing.configure(settings.checkout_otel_exporter, service, sample_ratio=settings.checkout_otel_sample_ratio)
    try:
        await Runtime(settings, roles).run(stop)
    finally:
        stop.set()
        await backstop
        tracing.shutdown()  # flush the spans still batched


async def _hard_stop_once_stopping(stop: asyncio.Event, seconds: float) -> None:
    await stop.wait()
    hard_stop_after(seconds)


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

    async def go(conn: Any, gate: Any) -> Any:
        await inventory_store.set_stock(conn, sku, price, quantity)
        if (await inventory_store.show(conn, sku) or {}).get("hot"):
            await inventory_admin.added(gate, sku, quantity)
        return await inventory_admin.show(conn, gate, sku)

    show_stock(run(with_stock_gate(settings, go)), as_json)


CSV_ARG = file_argument("A CSV whose header names sku, price and quantity.")


@stock_app.command("import")
def stock_import(path: Path = CSV_ARG, as_json: bool = JSON_OPT) -> None:
    """Import a CSV with columns sku,price,quantity (all rows, or none)."""
    settings = settings_for_command()
    try:
        # utf-8-sig: spreadsheets save UTF-8 with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(r.sku, r.price, r.quantity) for r in stock_csv.parse(fh, str(path))]
    except UnicodeDecodeError as exc:
        raise OperatorInputError(f"{path} is not UTF-8 text (byte {exc.start}); "
                                 "save it as a UTF-8 CSV") from exc

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
    row = run(with_stock_gate(settings, lambda conn, gate: inventory_admin.show(conn, gate, sku)))
    if row is None:
        err.print(f"[red]Unknown SKU {sku}.[/red]")
        raise typer.Exit(1)
    show_stock(row, as_json)


@stock_app.command("hot")
def stock_hot(
    sku: str,
    on: bool = typer.Option(..., "--on/--off", help="Gate the SKU in Redis (--on) or not (--off)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Mark a SKU hot (reservations pass an atomic Redis counter before PostgreSQL) or not."""
    settings = settings_for_command()

    async def go(conn: Any, gate: Any) -> Any:
        if not await inventory_admin.mark_hot(conn, gate, sku, on):
            return None
        return await inventory_admin.show(conn, gate, sku)

    row = run(with_stock_gate(settings, go))
    if row is None:
        err.print(f"[red]Unknown SKU {sku}.[/red]")
        raise typer.Exit(1)
    show_stock(row, as_json)


async def with_stock_gate(settings: Settings, fn: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``fn(conn, gate)``; the gate is None when no Redis is configured."""
    client = redis.asyncio.from_url(settings.redis_url) if settings.redis_url else None
    try:
        gate = RedisStockGate(client) if client is not None else None
        return await with_pool(settings, "inventory", lambda conn: fn(conn, gate))
    finally:
        if client is not None:
            await client.aclose()


def show_stock(row: Any, as_json: bool) -> None:
    if as_json:
        print_json(row)
        return
    table = Table(title=f"stock {row['sku']}")
    for key in row:
        table.add_column(key)
    table.add_row(*(cell(v) for v in row.values()))
    console.print(table)


def cell(value: Any) -> str:
    """A table cell for an operator: yes/no, and "-" for nothing (not False/None)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


@stock_app.command("list")
def stock_list(
    after: str | None = typer.Option(None, "--after", metavar="SKU",
                                     help="Start after this SKU (the next page)."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="SKUs per page."),
    as_json: bool = JSON_OPT,
) -> None:
    """Products in SKU order, a page at a time: price and stock (from PostgreSQL)."""
    settings = settings_for_command()
    rows = run(with_pool(settings, "inventory",
                         lambda conn: inventory_store.page(conn, after, limit)))
    following = str(rows[-1]["sku"]) if len(rows) == limit else None
    if as_json:
        print_json({"skus": rows, "next_after": following})
        return
    table = Table("sku", "price", "available", "held", "sold", "hot",
                  title=f"{len(rows)} SKU(s)" + (f" after {after}" if after else ""))
    for r in rows:
        table.add_row(*(cell(r[k]) for k in ("sku", "price", "available", "held", "sold", "hot")))
    console.print(table)
    if following:
        console.print(f"next page: checkout-saga stock list --after {following}", soft_wrap=True)


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
    console.print(cli_observe.saga_heading(found))
    if found.get("failure"):
        console.print(f"[red]failure: {found['failure']['reason']}[/red]: {found['failure']['detail']}")
    console.print(f"started {found['created_at']}")
    console.print(cli_observe.timeline_table(found["steps"]))


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
        out["settlement"] = await orders_store.settlement(conn, order_id)  # cancel/return
        return out

    found = run(with_pool(settings, "orders", go))
    if found is None:
        err.print(f"[red]No order {order_id}.[/red]")
        raise typer.Exit(1)
    if as_json:
        print_json(found)
        return
    console.print(f"[bold]{order_id}[/bold]  {found['status']}  total {found['total']} {found['currency']}")
    table = Table("at", "from", "to", "kind", "reason")
    for h in found["history"]:
        table.add_row(h["at"], h["from"] or "", h["to"], h["kind"], h["reason"] or "")
    console.print(table)
    if found["settlement"]:
        st = found["settlement"]
        console.print(f"{st['kind'].lower()} settlement {st['state']}: payment "
                      f"{st['payment_status'] or 'pending'}, stock "
                      f"{'back' if st['restocked'] is not None else 'pending'}"
                      + (f", last error: {st['last_error']}" if st["last_error"] else ""))


@app.command()
def demo(
    checkouts: int = typer.Option(300, "--checkouts", min=1, help="How many checkouts to drive."),
    as_json: bool = JSON_OPT,
) -> None:
    """The main job on the embedded stack: seed stock, drive a burst of checkouts, print the outcome."""
    from checkout_saga.dev.demo import run_demo

    run_demo(checkouts, as_json)


def main() -> None:
    app()
