"""Where the servers are: the environment first, else the endpoints file that
a running ``checkout-saga up`` (or ``demo``) wrote for the embedded stack."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from checkout_saga.settings import Settings
from checkout_saga.stack import EmbeddedStack, Endpoints

FILE_NAME = "endpoints.json"


def endpoints_file(settings: Settings) -> Path:
    return settings.checkout_data_dir / FILE_NAME


def write(settings: Settings, endpoints: Endpoints) -> Path:
    path = endpoints_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kafka_bootstrap_servers": endpoints.kafka_bootstrap,
        "database_url": endpoints.database_url,
        "redis_url": endpoints.redis_url,
        "pid": os.getpid(),
    }))
    return path


def remove(settings: Settings) -> None:
    endpoints_file(settings).unlink(missing_ok=True)


def with_embedded(settings: Settings, endpoints: Endpoints,
                  client_settings: Mapping[str, object]) -> Settings:
    """Settings that point at the started servers, with what their broker's clients need
    (``EmbeddedStack.client_settings``: nothing for Apache Kafka, short timeouts for tansu)."""
    update: dict[str, object] = {
        "kafka_bootstrap_servers": endpoints.kafka_bootstrap,
        "database_url": settings.database_url or endpoints.database_url,
        "redis_url": endpoints.redis_url,
        **client_settings,
    }
    return settings.model_copy(update=update)


def embedded_stack(settings: Settings, workdir: Path) -> EmbeddedStack:
    """The embedded stack of the broker these settings choose."""
    return EmbeddedStack(workdir, broker=settings.checkout_embedded_broker,
                         kafka_home=settings.checkout_kafka_home)


def resolve(settings: Settings) -> Settings:
    """Fill unset URLs from a running embedded stack's endpoints file."""
    if settings.kafka_bootstrap_servers and settings.database_url and settings.redis_url:
        return settings
    path = endpoints_file(settings)
    if not path.exists():
        return settings
    found = json.loads(path.read_text())
    update = {k: v for k, v in found.items() if k != "pid" and not getattr(settings, k)}
    return settings.model_copy(update=update)


@contextmanager
def embedded(settings: Settings, name: str, *, fresh_kafka: bool = False) -> Iterator[Settings]:
    """Start the servers whose URL is unset (in ``<data dir>/<name>``) for the
    length of one command, and yield the settings that point at them
    (`fresh_kafka`: an empty broker, whatever an earlier run left)."""
    stack = embedded_stack(settings, settings.checkout_data_dir / name)
    try:
        found = stack.start(kafka=settings.kafka_bootstrap_servers,
                            database=settings.database_url, redis=settings.redis_url,
                            fresh_kafka=fresh_kafka)
        yield with_embedded(settings, found, stack.client_settings)
    finally:
        stack.stop()
