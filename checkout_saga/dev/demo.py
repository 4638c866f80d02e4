"""``checkout-saga demo``: the main job on the embedded stack.

Seeds stock, drives a burst of checkouts of mixed kinds (successes, declines,
a flaky gateway, a sold-out SKU, unknown SKUs, changed prices, garbage),
waits for every result with a progress bar and prints the outcome table and
the time taken, then checks that nothing was oversold or left held.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from checkout_saga import bootstrap
from checkout_saga.client import Cart, checkout_request
from checkout_saga.output import print_json
from checkout_saga.runtime import Runtime, prepare
from checkout_saga.seeding import seed_stock
from messaging.db import create_pool
from messaging.settings import Settings

console = Console()

SCARCE_UNITS = 20


def plan(n: int, run_id: str) -> list[tuple[str, str, bytes | None]]:
    """(session id, kind, payload) for n checkouts; payload None means garbage."""
    rng = random.Random(7)
    kinds = (["ok"] * 60 + ["scarce"] * 15 + ["declined"] * 6 + ["insufficient"] * 3 +
             ["flaky"] * 5 + ["unknown_sku"] * 4 + ["price_changed"] * 4 + ["garbage"] * 3)
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        sid = f"demo-{run_id}-{i:05d}"
        sku = f"DEMO-{run_id}-{rng.randrange(5)}"
        items = [(sku, rng.randint(1, 3), 1999)]
        token = "tok_visa"
        if kind == "scarce":
            items = [(f"DEMO-{run_id}-SCARCE", 1, 4999)]
        elif kind == "declined":
            token = "tok_chargeDeclined"
        elif kind == "insufficient":
            token = "tok_insufficientFunds"
        elif kind == "flaky":
            token = "tok_flaky"
        elif kind == "unknown_sku":
            items = [(f"NOPE-{run_id}-{i}", 1, 100)]
        elif kind == "price_changed":
            items = [(sku, 1, 1499)]
        payload = None if kind == "garbage" else checkout_request(sid, items, token)
        out.append((sid, kind, payload))
    return out


async def seed(settings: Settings, run_id: str) -> None:
    await seed_stock(settings, {**{f"DEMO-{run_id}-{i}": (1999, 10_000) for i in range(5)},
                                f"DEMO-{run_id}-SCARCE": (4999, SCARCE_UNITS)})


async def stock_report(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    pool = await create_pool(settings.dsn_for("inventory"), 2)
    rows = await pool.fetch(
        "SELECT sku, added, available, held, sold FROM inventory.products WHERE sku LIKE $1 ORDER BY sku",
        f"DEMO-{run_id}-%",
    )
    await pool.close()
    return [dict(r) for r in rows]


async def drive(settings: Settings, n: int, as_json: bool) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    await prepare(settings)
    await seed(settings, run_id)
    stop = asyncio.Event()
    runtime = Runtime(settings)
    worker = asyncio.create_task(runtime.run(stop))
    await runtime.ready.wait()
    cart = await asyncio.to_thread(Cart, settings)
    checkouts = plan(n, run_id)
    started = time.perf_counter()
    for sid, _kind, payload in checkouts:
        cart.send(sid, payload if payload is not None else b'{"not": "a checkout", "subject": "' + sid.encode() + b'"}')
    cart.flush()
    with Progress(TextColumn("checkouts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=as_json) as bar:
        task = bar.add_task("checkouts", total=n)
        results = await asyncio.to_thread(
            cart.results, [c[0] for c in checkouts], 180.0, lambda _e: bar.advance(task)
        )
    elapsed = time.perf_counter() - started
    cart.close()
    stop.set()
    await worker
    outcomes: Counter[str] = Counter()
    for event in results.values():
        outcomes[event["type"] if event["type"] == "CheckoutSucceeded" else f"CheckoutFailed/{event['data']['reason']}"] += 1
    stock = await stock_report(settings, run_id)
    oversold = [r["sku"] for r in stock if r["held"] + r["sold"] > r["added"]]
    still_held = [r["sku"] for r in stock if r["held"] != 0]
    return {"checkouts": n, "results": len(results), "missing": n - len(results),
            "seconds": round(elapsed, 2), "per_second": round(len(results) / elapsed, 1),
            "outcomes": dict(sorted(outcomes.items())), "oversold": oversold,
            "still_held": still_held, "stock": stock}


def run_demo(n: int, as_json: bool) -> None:
    with bootstrap.private_stack(Settings(), "demo-stack") as settings:
        report = bootstrap.run(drive(settings, n, as_json))
    if as_json:
        print_json(report)
    else:
        table = Table("outcome", "count", title=f"{n} checkouts in {report['seconds']} s "
                      f"({report['per_second']}/s)")
        for outcome, count in report["outcomes"].items():
            table.add_row(outcome, str(count))
        if report["missing"]:
            table.add_row("[red]no result[/red]", str(report["missing"]))
        console.print(table)
        stock = Table("sku", "added", "available", "held", "sold", title="stock after the burst")
        for r in report["stock"]:
            stock.add_row(*(str(r[k]) for k in ("sku", "added", "available", "held", "sold")))
        console.print(stock)
        ok = not report["missing"] and not report["oversold"] and not report["still_held"]
        console.print("[green]every checkout ended; nothing oversold; no hold left[/green]" if ok
                      else "[red]guarantee check failed[/red]")
    if report["missing"] or report["oversold"] or report["still_held"]:
        raise SystemExit(1)
