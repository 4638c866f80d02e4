"""Which driver errors are transient: Redis failover refusals, with or without
their own class (the real refusals from a replica: tests/integration/test_redis_failover.py)."""

from __future__ import annotations

import pytest
import redis.exceptions as r

from messaging.errors import PermanentError, is_transient

SCRIPT = "Error running script (call to f_0123): @user_script:8: @user_script: 8: "


@pytest.mark.parametrize("exc", [
    r.ReadOnlyError("You can't write against a read only replica."),
    r.MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    r.ClusterDownError("The cluster is down"),
    r.TryAgainError("Multiple keys request during rehashing of slot"),
    r.BusyLoadingError("Redis is loading the dataset in memory"),
    r.ResponseError(SCRIPT + "-READONLY You can't write against a read only replica."),
    r.ResponseError(SCRIPT + "-NOREPLICAS Not enough good replicas to write."),
    r.ResponseError("NOREPLICAS Not enough good replicas to write."),
    r.ResponseError(SCRIPT + "-MASTERDOWN Link with MASTER is down"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[-30:]}")
def test_a_failover_refusal_is_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    r.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    r.ResponseError(SCRIPT + "-ERR value is not an integer or out of range"),
    r.ResponseError("ERR unknown command 'READONLYX'"),
    r.NoPermissionError("this user has no permissions"),
    PermanentError("bad input"),
], ids=lambda e: f"{type(e).__name__}:{str(e)[-30:]}")
def test_other_redis_errors_stay_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)
