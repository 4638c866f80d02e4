"""``checkout-saga promo``: create promo codes and see how many uses are left.

The numbers come from the PostgreSQL usage ledger (the record), never from
the Redis gate, which may be rebuilding after a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from checkout_saga.bootstrap import run
from checkout_saga.cli import console as cli_console
from checkout_saga.cli.common import settings_for_command, with_pool
from checkout_saga.output import print_json
from messaging.errors import OperatorInputError
from services.inventory import store as inventory_store
from services.promotions import store
from services.promotions.rules import Promo, definition_errors, normalize_code

app = typer.Typer(help="Promo codes: create them, see their uses.", no_args_is_help=True)
_console = Console()
_err = cli_console.err
SCHEMA = "promotions"


def parse_expiry(raw: str | None) -> datetime | None:
    """RFC 3339 / ISO 8601; a time without a zone is taken as UTC."""
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise typer.BadParameter(f"{raw!r} is not an ISO 8601 time ({exc})", param_hint="--expires-at")
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise typer.BadParameter(f"{raw} is in the past; give a time to come (UTC if no zone)",
                                 param_hint="--expires-at")
    return when


def parse_skus(raw: str | None) -> frozenset[str] | None:
    if raw is None:
        return None
    return frozenset(s.strip() for s in raw.split(",") if s.strip())


@app.command("create")
def create(
    code: str,
    percent_off: int | None = typer.Option(None, "--percent-off", help="Percent off (1-100)."),
    amount_off: int | None = typer.Option(
        None, "--amount-off", help="Amount off in minor units (cents)."
    ),
    max_uses: int = typer.Option(..., "--max-uses", min=0, help="How many checkouts may use it."),
    expires_at: str | None = typer.Option(
        None, "--expires-at", help="When it stops working (ISO 8601; UTC if no zone)."
    ),
    skus: str | None = typer.Option(
        None, "--skus", help="Comma-separated SKUs it applies to (default: every SKU)."
    ),
    min_subtotal: int = typer.Option(
        0, "--min-subtotal", min=0, help="Smallest cart subtotal it applies to (cents)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Create a promo code (an existing code is never changed)."""
    promo = Promo(
        code=normalize_code(code),
        max_uses=max_uses,
        percent_off=percent_off,
        amount_off=amount_off,
        expires_at=parse_expiry(expires_at),
        skus=parse_skus(skus),
        min_subtotal=min_subtotal,
    )
    errors = definition_errors(promo)
    if errors:
        _err.print(f"[red]Cannot create {promo.code}: {'; '.join(errors)}.[/red]")
        raise typer.Exit(2)
    settings = settings_for_command()
    only = promo.skus
    if only:
        unknown = run(with_pool(settings, "inventory", lambda conn: _unknown(conn, only)))
        if unknown:
            raise OperatorInputError(
                f"Cannot create {promo.code}: SKU(s) not in inventory: {', '.join(unknown)}; "
                "add them with `checkout-saga stock set` first, or fix --skus.")

    async def go(conn: Any) -> tuple[bool, dict[str, Any] | None]:
        created = await store.create(conn, promo)
        return created, await store.show(conn, promo.code)

    created, row = run(with_pool(settings, SCHEMA, go))
    if not created:
        _err.print(f"[red]The promo code {promo.code} exists already; it was not changed.[/red]")
        raise typer.Exit(1)
    assert row is not None
    _print(row, as_json)


@app.command("show")
def show(code: str, as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")) -> None:
    """A promo code: its terms, uses taken and remaining."""
    settings = settings_for_command()
    row = run(with_pool(settings, SCHEMA, lambda conn: store.show(conn, normalize_code(code))))
    if row is None:
        _err.print(f"[red]No promo code {normalize_code(code)}.[/red]")
        raise typer.Exit(1)
    _print(row, as_json)


async def _unknown(conn: Any, skus: frozenset[str]) -> list[str]:
    """The SKUs inventory does not know (its own schema, maybe its own database)."""
    known = await inventory_store.prices(conn, sorted(skus))
    return sorted(skus - known.keys())


def _print(row: dict[str, Any], as_json: bool) -> None:
    out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    if as_json:
        print_json(out)
        return
    off = f"{out['percent_off']}%" if out["percent_off"] is not None else f"{out['amount_off']} off"
    _console.print(f"[bold]{out['code']}[/bold]  {off}  used {out['used']} of {out['max_uses']}"
                   f", {out['remaining']} remaining")
    table = Table("expires at", "SKUs", "min subtotal", "released", "created at")
    table.add_row(out["expires_at"] or "never", ", ".join(out["skus"] or []) or "all",
                  str(out["min_subtotal"]), str(out["released"]), out["created_at"])
    _console.print(table)
