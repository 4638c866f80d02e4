"""What the command groups of ``checkout-saga`` share: the settings a command reads,
refused in one line when a server is missing, its logging, and a connection on one
schema. It lives here, below ``checkout_saga.cli.app``, so that the command-group
modules import it rather than the CLI module that imports them (no cycle). The event
loop and JSON output are the application's: ``bootstrap.run``, ``output.print_json``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from checkout_saga import bootstrap
from checkout_saga.cli.console import err
from messaging.settings import Settings

T = TypeVar("T")


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

