"""The composition root: the settings and servers every command starts from.

``up``, its supervised form, the operator commands, ``demo`` and ``bench`` all
come through here, so where the servers are is decided in one place: a URL in
the environment is used as it is; an unset one is taken from a running
``up``'s endpoints file (so a second ``up --role payment`` or an operator
command joins that stack); failing both, the embedded server is started.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from checkout_saga import endpoints
from checkout_saga.embedded.kafka_broker import KAFKA_VERSION
from checkout_saga.embedded.stack import EmbeddedStack, Endpoints
from checkout_saga.runtime import DDL
from messaging.db import create_pool, migrate
from messaging.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

_BROKER_NAMES = {"kafka": f"Apache Kafka {KAFKA_VERSION}", "tansu": "tansu, the fallback"}


def run(coro: Awaitable[T]) -> T:
    """Run a command's coroutine on the event loop every process of the project uses."""
    return uvloop.run(coro)  # type: ignore[no-any-return, arg-type]


def operator_settings() -> Settings:
    """The environment's settings, with what it leaves unset filled from a running stack."""
    return endpoints.resolve(Settings())


def embedded_stack(settings: Settings, workdir: Path) -> EmbeddedStack:
    """The embedded stack of the broker these settings choose."""
    return EmbeddedStack(workdir, broker=settings.checkout_embedded_broker,
                         kafka_home=settings.checkout_kafka_home)


def with_embedded(settings: Settings, found: Endpoints,
                  client_settings: Mapping[str, object]) -> Settings:
    """Settings that point at the started servers, with what their broker's clients need
    (``EmbeddedStack.client_settings``: nothing for Apache Kafka, short timeouts for tansu)."""
    return settings.model_copy(update={
        "kafka_bootstrap_servers": found.kafka_bootstrap,
        "database_url": settings.database_url or found.database_url,
        "redis_url": found.redis_url,
        **client_settings,
    })


@contextmanager
def serving_stack(settings: Settings, announce: Callable[[str], None]
                  ) -> Iterator[tuple[Settings, EmbeddedStack]]:
    """The servers of ``up``: the given or running ones, and the embedded ones for the rest,
    published in the endpoints file for the commands and workers that join them while
    ``up`` runs. Yields the settings that reach them and the stack (what it started)."""
    stack = embedded_stack(settings, settings.checkout_data_dir / "stack")
    try:
        found = stack.start(kafka=settings.kafka_bootstrap_servers,
                            database=settings.database_url, redis=settings.redis_url)
        settings = with_embedded(settings, found, stack.client_settings)
        if stack.started:
            path = endpoints.write(settings, found, stack.client_settings)
            servers = sorted(stack.started - {"kafka"})
            if stack.broker:
                servers.append(f"kafka ({_BROKER_NAMES[stack.broker]})")
            announce(f"embedded {', '.join(servers)} started; endpoints in {path}")
        else:
            announce("nothing embedded started: using the servers given or already running")
        yield settings, stack
    finally:
        if stack.started:
            endpoints.remove(settings)
        stack.stop()


@contextmanager
def private_stack(settings: Settings, name: str, *, fresh_kafka: bool = False) -> Iterator[Settings]:
    """The servers whose URL is unset, started in ``<data dir>/<name>`` for the length of one
    command (demo, bench) and never published: nothing else joins them
    (`fresh_kafka`: an empty broker, whatever an earlier run left)."""
    stack = embedded_stack(settings, settings.checkout_data_dir / name)
    try:
        found = stack.start(kafka=settings.kafka_bootstrap_servers,
                            database=settings.database_url, redis=settings.redis_url,
                            fresh_kafka=fresh_kafka)
        yield with_embedded(settings, found, stack.client_settings)
    finally:
        stack.stop()


@asynccontextmanager
async def schema_connection(settings: Settings, schema: str) -> AsyncIterator[Any]:
    """One connection on ``schema``'s database, its tables migrated: what an operator
    command that reads or writes one service's tables needs."""
    pool = await create_pool(settings.dsn_for(schema), 2)
    try:
        await migrate(pool, schema, DDL[schema])
        async with pool.acquire() as conn:
            yield conn
    finally:
        await pool.close()
