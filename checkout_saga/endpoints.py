"""Where the servers are: the environment first, else the endpoints file that
a running ``checkout-saga up`` (or ``demo``) wrote for the embedded stack."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from checkout_saga.embedded.stack import Endpoints
from messaging.settings import Settings

FILE_NAME = "endpoints.json"


def endpoints_file(settings: Settings) -> Path:
    return settings.checkout_data_dir / FILE_NAME


def write(settings: Settings, endpoints: Endpoints,
          client_settings: Mapping[str, object] | None = None) -> Path:
    path = endpoints_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "kafka_bootstrap_servers": endpoints.kafka_bootstrap,
        "database_url": endpoints.database_url,
        "redis_url": endpoints.redis_url,
        "pid": os.getpid(),
        # what the broker's clients need (tansu's short timeouts), for the processes that join
        "client_settings": dict(client_settings or {}),
    }))
    return path


def remove(settings: Settings) -> None:
    endpoints_file(settings).unlink(missing_ok=True)


def resolve(settings: Settings) -> Settings:
    """Fill unset URLs from a running embedded stack's endpoints file."""
    if settings.kafka_bootstrap_servers and settings.database_url and settings.redis_url:
        return settings
    path = endpoints_file(settings)
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return settings
    if not _running(found.get("pid")):
        return settings  # left by an `up` that was killed: its servers are gone too
    servers = ("kafka_bootstrap_servers", "database_url", "redis_url")
    update: dict[str, object] = {k: found[k] for k in servers
                                 if found.get(k) and not getattr(settings, k)}
    if "kafka_bootstrap_servers" in update:
        update.update({k: v for k, v in found.get("client_settings", {}).items()
                       if k not in settings.model_fields_set})
    return settings.model_copy(update=update)


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, and another user's
    return True
