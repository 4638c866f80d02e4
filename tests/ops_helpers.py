"""A stack of a test's own, with worker processes of its own.

For the operator tests (replay, dead letters, stuck sagas, planted breaches)
that must stop workers, rewind groups or break the data: none of that may
touch the session's shared stack, which every other test uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import asyncpg
from click.testing import Result
from helpers import cli, stop_process
from typer.testing import CliRunner

from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.ops.chaos import settings_from
from checkout_saga.ops.supervisor import settings_env
from checkout_saga.runtime import prepare
from messaging.settings import Settings

FAST = {
    "CHECKOUT_PAYMENT_TIMEOUT_SECONDS": "2",
    "CHECKOUT_GATEWAY_LATE_ANSWER_SECONDS": "1",
    "CHECKOUT_STEP_TIMEOUT_SECONDS": "2",
    "CHECKOUT_PARTITIONS": "2",  # as the session stack (conftest.py): CPU
}
URL_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")


def sql(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """One query on its own connection, its rows as dicts."""
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()
    return asyncio.run(go())


@dataclass
class OwnStack:
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    servers: EmbeddedStack | None = None
    env: dict[str, str] = field(default_factory=dict)
    settings: Settings | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Self:
        self.servers = EmbeddedStack(self.workdir / "stack")
        found = self.servers.start()
        urls = settings_env(found.kafka_bootstrap, found.database_url, found.redis_url,
                            self.servers.client_settings)
        own = {**FAST, **self.extra_env, **urls}
        self.env = {**{k: v for k, v in os.environ.items() if k not in URL_VARS}, **own,
                    "CHECKOUT_DATA_DIR": str(self.workdir / "data")}
        self.settings = settings_from(own)
        asyncio.run(prepare(self.settings))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.workers:
            self.stop(proc)
        if self.servers is not None:
            self.servers.stop()

    @property
    def bootstrap(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    @property
    def dsn(self) -> str:
        return self.env["DATABASE_URL"]

    def start(self, *roles: str, **env: str) -> subprocess.Popen[bytes]:
        args = [str(Path(sys.executable).with_name("checkout-saga")), "up"]
        for role in roles:
            args += ["--role", role]
        log = (self.workdir / f"worker-{len(self.workers)}.log").open("ab")
        proc = subprocess.Popen(args, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.workers.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        stop_process(proc)

    def stop_all(self) -> None:
        for proc in self.workers:
            self.stop(proc)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return cli(self.env, *args, check=check)

    def invoke(self, *args: str, code: int | None = 0) -> Result:
        return invoke(self.env, *args, code=code)

    def invoke_json(self, *args: str) -> Any:
        return json.loads(self.invoke(*args, "--json").stdout)

    def sql(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return sql(self.dsn, query, *args)


def invoke(env: dict[str, str], *args: str, code: int | None = 0) -> Result:
    """`checkout-saga ARGS` run in this process (no interpreter start-up)."""
    from checkout_saga.cli.app import app

    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, (
            f"checkout-saga {' '.join(args)} exited {result.exit_code}:\n"
            f"{result.stdout}\n{result.stderr}")
    return result
