"""Errors of the runtime, and which of them are worth retrying.

    CheckoutSagaError
    ├── TransientError      retried with backoff; the message is not committed
    ├── PermanentError      the message goes to <topic>.dlq and the partition moves on
    │   ├── MessageRefused      Kafka will never take this message as it is (too large,
    │   │                       an invalid topic or record): a dead letter, or the outbox
    │   │                       row is quarantined
    │   └── RetriesExhausted    a message kept failing transiently while others succeeded
    ├── KafkaFatalError     the Kafka client is unusable (librdkafka's fatal error):
    │                       nothing is dead-lettered, the process stops to be restarted
    └── OperatorInputError  a command refuses what an operator typed or gave it (a CSV
                            row, a promo's terms): one line on stderr, exit 2

The errors other modules raise derive from ``CheckoutSagaError`` as well,
keeping the builtin base their callers catch: ``StackError``,
``KafkaSetupError``, ``TraversalError``, ``TopicUnavailable``, ``ReplayError``
(the application), ``UnknownSaga`` (saga), ``IllegalTransition``, ``LostRace``
(orders), ``SagaMovedOn`` and ``GatewayUnavailable`` (transient).

Driver exceptions (asyncpg, redis, OS errors) are classified at the edge by
``is_transient`` so the handlers never catch driver types themselves; Kafka
errors by ``kafka_error``, in the producer adapter. Importing this module loads
none of the drivers: a driver's classes are looked up only once the process
has loaded it (an exception of a driver never imported cannot be raised).
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka import KafkaError


class CheckoutSagaError(Exception):
    """Root of this package's errors."""


class TransientError(CheckoutSagaError):
    """Infrastructure trouble that a retry can fix."""


class PermanentError(CheckoutSagaError):
    """A message that can never be handled as it is."""


class MessageRefused(PermanentError):
    """Kafka (the client or the broker) refuses this message for good."""


class RetriesExhausted(PermanentError):
    """A message whose transient failures outlasted the retry budget while
    other messages on the same consumer succeeded: the message, not the
    infrastructure, is the problem. The last failure is its ``__cause__``."""


class KafkaFatalError(CheckoutSagaError):
    """The client instance can send nothing more (an idempotent producer's
    fatal error); retrying with it is useless, and no message is to blame."""


class OperatorInputError(CheckoutSagaError):
    """An operator's input that a command refuses. The message is the one line
    the operator reads: what is wrong, where, and what is expected."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
)


def _asyncpg_transient(asyncpg: Any) -> tuple[type[BaseException], ...]:
    return (
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
    )


def _redis_transient(exceptions: Any) -> tuple[type[BaseException], ...]:
    return (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        exceptions.BusyLoadingError,
        # A failover in progress: the node we reach was demoted to a replica
        # (READONLY), lost its primary (MASTERDOWN), or a cluster is moving or
        # missing slots (TRYAGAIN, CLUSTERDOWN). Once the new primary is there the
        # same command works, and nothing was written by the refused one.
        exceptions.ReadOnlyError,
        exceptions.ClusterDownError,  # MasterDownError too
        exceptions.TryAgainError,
    )


@functools.cache
def _transient(asyncpg: Any, redis_exceptions: Any) -> tuple[type[BaseException], ...]:
    """The transient classes, given the drivers loaded so far (None: not loaded)."""
    return (_TRANSIENT
            + (_asyncpg_transient(asyncpg) if asyncpg is not None else ())
            + (_redis_transient(redis_exceptions) if redis_exceptions is not None else ()))


# The same failover refusals when they come back without their own class:
# Redis 6 wraps an error raised inside a Lua script (every gate is one) as
# "ERR Error running script ... -READONLY You can't write ...", and redis-py
# has no class for NOREPLICAS (min-replicas-to-write not met during a failover).
_REDIS_FAILOVER = re.compile(r"(?:\A|-)(READONLY|MASTERDOWN|LOADING|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)\b")


def is_transient(exc: BaseException) -> bool:
    redis_exceptions = sys.modules.get("redis.exceptions")
    if isinstance(exc, _transient(sys.modules.get("asyncpg"), redis_exceptions)):
        return True
    return (redis_exceptions is not None and isinstance(exc, redis_exceptions.ResponseError)
            and bool(_REDIS_FAILOVER.search(str(exc))))


# Errors that belong to one message: the same bytes to the same topic fail
# again however often they are sent. Any other error (an unknown topic, a
# timeout, an authorization error) may be the cluster's state, which an
# operator can fix: those are transient, so nothing is dead-lettered or
# quarantined for what an outage or a misconfiguration did.
_REFUSED = frozenset({
    "MSG_SIZE_TOO_LARGE",
    "RECORD_LIST_TOO_LARGE",
    "TOPIC_EXCEPTION",  # "Invalid topic": a bad topic name
})
# INVALID_* codes that describe the producer's or a session's state, not the message.
_INVALID_BUT_NOT_THE_MESSAGE = frozenset({
    "INVALID_MSG",  # CORRUPT_MESSAGE: a CRC error on the way, retriable in Kafka
    "INVALID_PRODUCER_EPOCH",
    "INVALID_PRODUCER_ID_MAPPING",
    "INVALID_TXN_STATE",
    "INVALID_FETCH_SESSION_EPOCH",
})


@functools.cache
def _codes(names: frozenset[str]) -> frozenset[int]:
    # KafkaError's codes, read once a KafkaError exists (the client is loaded).
    from confluent_kafka import KafkaError

    return frozenset(getattr(KafkaError, name) for name in names)


def kafka_error(err: KafkaError) -> CheckoutSagaError:
    """One of our errors for a librdkafka error (a delivery report's, or
    one ``produce()`` raised): fatal, refused (permanent) or transient."""
    from confluent_kafka import KafkaError  # loaded already: err is one

    text = f"{err.name()}: {err.str()}"
    if err.fatal() or err.code() == KafkaError._FATAL:
        return KafkaFatalError(text)
    if err.retriable():
        return TransientError(text)
    code = err.code()
    name = err.name() or ""
    invalid = (name.startswith(("INVALID_", "_INVALID_"))
               and code not in _codes(_INVALID_BUT_NOT_THE_MESSAGE))
    if code in _codes(_REFUSED) or invalid:
        return MessageRefused(text)
    return TransientError(text)
