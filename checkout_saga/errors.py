"""Errors of the runtime, and which of them are worth retrying.

    CheckoutSagaError
    ├── TransientError      retried with backoff; the message is not committed
    └── PermanentError      the message goes to <topic>.dlq and the partition moves on

Driver exceptions (asyncpg, redis, OS errors) are classified at the edge by
``is_transient`` so the handlers never catch driver types themselves.
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis.exceptions


class CheckoutSagaError(Exception):
    """Root of this package's errors."""


class TransientError(CheckoutSagaError):
    """Infrastructure trouble that a retry can fix."""


class PermanentError(CheckoutSagaError):
    """A message that can never be handled as it is."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.LockNotAvailableError,
    # Raised when a connection is lost mid-operation (a PostgreSQL restart):
    # "cannot switch to state N; another operation is in progress". The pool
    # replaces the connection, so the retry works; dead-lettering would lose
    # a good message (seen in the chaos run).
    asyncpg.exceptions.InternalClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)
