"""What the command groups of ``checkout-saga`` share: the event loop, the
settings a command reads, a connection on one schema and JSON output. It lives here, below ``checkout_saga.cli.app``, so that the command-group
modules import it rather than the CLI module that imports them (no cycle)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
import uvloop

from checkout_saga import bootstrap
from checkout_saga.cli.console import err
from messaging.settings import Settings

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[no-any-return, arg-type]


def settings_for_command(db: str | None = "inventory", kafka: bool = False) -> Settings:
    """The settings of an operator command, the embedded stack's endpoints
    included; refused in one line without the database of schema ``db`` (none
    needed if None) or, if ``kafka``, without a broker."""
    settings = bootstrap.operator_settings()
    if db and not settings.database_url and not getattr(settings, f"{db}_database_url"):
        err.print("[red]No database: set DATABASE_URL, or start `checkout-saga up` first.[/red]")
        raise typer.Exit(2)
    if kafka and not settings.kafka_bootstrap_servers:
        err.print("[red]No broker: set KAFKA_BOOTSTRAP_SERVERS, or start `checkout-saga up` first.[/red]")
        raise typer.Exit(2)
    return settings


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.checkout_log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


async def with_pool(settings: Settings, schema: str, fn: Callable[[Any], Awaitable[T]]) -> T:
    async with bootstrap.schema_connection(settings, schema) as conn:
        return await fn(conn)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")
