"""PostgreSQL pools and schema migration: one schema per service."""

from __future__ import annotations

import asyncpg

MIGRATION_LOCK = 0x5A6A  # one advisory lock: concurrent starters migrate one at a time


def messaging_ddl(schema: str) -> str:
    """The inbox, outbox and outbox quarantine tables every service (and the
    coordinator) owns."""
    return f"""
    CREATE TABLE IF NOT EXISTS {schema}.inbox (
        checkout_session_id text NOT NULL,
        command text NOT NULL,
        reply bytea,
        handled_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (checkout_session_id, command)
    );
    CREATE TABLE IF NOT EXISTS {schema}.outbox (
        id bigserial PRIMARY KEY,
        topic text NOT NULL,
        key text NOT NULL,
        value bytea NOT NULL,
        headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    -- Outbox rows the broker refused for good (too large, a bad topic name),
    -- moved here by the relay so that the rows behind them are published.
    CREATE TABLE IF NOT EXISTS {schema}.outbox_quarantine (
        id bigint PRIMARY KEY,
        topic text NOT NULL,
        key text NOT NULL,
        value bytea NOT NULL,
        headers jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        error text NOT NULL,
        quarantined_at timestamptz NOT NULL DEFAULT now()
    );
    """


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No RESET ALL on release: our code keeps no session state (only
    transaction-scoped locks and settings), and the reset costs a round trip
    per handler. A connection left inside a transaction (a broken one) is
    refused, which makes the pool terminate it instead of reusing it."""
    if conn.is_in_transaction():
        raise RuntimeError("connection released inside a transaction")


async def create_pool(
    dsn: str, size: int, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=size,
        command_timeout=60,
        max_inactive_connection_lifetime=60,
        reset=_keep_session,
        server_settings=server_settings,
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, ddl: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(messaging_ddl(schema))
        await conn.execute(ddl)
