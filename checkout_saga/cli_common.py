"""What the command groups of ``checkout-saga`` share: the event loop, the
settings a command reads, a pool on one schema, JSON output and the embedded
stack. It lives here, below ``checkout_saga.cli``, so that the command-group
modules import it rather than the CLI module that imports them (no cycle)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
import uvloop

from checkout_saga import endpoints
from checkout_saga.cli_console import err
from checkout_saga.db import create_pool, migrate
from checkout_saga.kafka_broker import KAFKA_VERSION
from checkout_saga.runtime import DDL
from checkout_saga.settings import Settings
from checkout_saga.stack import EmbeddedStack

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return uvloop.run(coro)  # type: ignore[no-any-return, arg-type]


def settings_for_command(db: str | None = "inventory", kafka: bool = False) -> Settings:
    """The settings of an operator command, the embedded stack's endpoints
    included; refused in one line without the database of schema ``db`` (none
    needed if None) or, if ``kafka``, without a broker."""
    settings = endpoints.resolve(Settings())
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
    pool = await create_pool(settings.dsn_for(schema), 2)
    try:
        await migrate(pool, schema, DDL[schema])
        async with pool.acquire() as conn:
            return await fn(conn)
    finally:
        await pool.close()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")


_BROKER_NAMES = {"kafka": f"Apache Kafka {KAFKA_VERSION}", "tansu": "tansu, the fallback"}


def start_stack(settings: Settings, stack: EmbeddedStack) -> Settings:
    found = stack.start(
        kafka=settings.kafka_bootstrap_servers,
        database=settings.database_url,
        redis=settings.redis_url,
    )
    settings = endpoints.with_embedded(settings, found, stack.client_settings)
    if stack.started:
        path = endpoints.write(settings, found)
        servers = sorted(stack.started - {"kafka"}) + ([f"kafka ({_BROKER_NAMES[stack.broker]})"]
                                                      if stack.broker else [])
        err.print(f"embedded {', '.join(servers)} started; endpoints in {path}")
    return settings
