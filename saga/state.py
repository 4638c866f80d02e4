"""Saga instance state, the events that move it and the effects it asks for.

Plain frozen dataclasses: no I/O, JSON-serialisable through ``to_json`` and
``from_json`` so the coordinator can keep one row per saga.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (SagaStatus.SUCCEEDED, SagaStatus.FAILED)


@dataclass(frozen=True)
class Failure:
    reason: str
    detail: str
    skus: tuple[str, ...] = ()


@dataclass(frozen=True)
class SagaState:
    session_id: str
    definition_version: int
    status: SagaStatus
    # RUNNING: index of the step in flight. COMPENSATING: index into
    # ``to_compensate`` of the compensation in flight.
    cursor: int
    attempt: int
    completed: tuple[str, ...] = ()
    to_compensate: tuple[str, ...] = ()
    failure: Failure | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    stuck: bool = False

    def with_context(self, extra: Mapping[str, Any]) -> SagaState:
        return replace(self, context={**self.context, **extra})

    @property
    def deadline_token(self) -> str:
        """Identifies the wait a deadline belongs to, so stale ones are ignored."""
        return f"{self.status}:{self.cursor}:{self.attempt}"


# ---- events fed into the machine -------------------------------------------


@dataclass(frozen=True)
class Started:
    session_id: str
    context: Mapping[str, Any]


@dataclass(frozen=True)
class Replied:
    command: str
    ok: bool
    data: Mapping[str, Any] = field(default_factory=dict)
    failure: Failure | None = None


@dataclass(frozen=True)
class DeadlinePassed:
    token: str


class OperatorKind(StrEnum):
    """What an operator can ask of a saga that does not end by itself."""

    RETRY = "retry"  # send the command in flight again (unsticks a stuck saga)
    COMPENSATE = "compensate"  # give up before the pivot and undo what was done
    SKIP_STEP = "skip-step"  # treat the step in flight as done (it was fixed by hand)


@dataclass(frozen=True)
class OperatorAction:
    """An operator's action (``saga retry|compensate|skip-step``), logged with its reason.

    ``data`` is context the operator vouches for when a step is skipped: what
    the skipped step's reply would have carried.
    """

    kind: OperatorKind
    reason: str
    operator: str = "operator"
    data: Mapping[str, Any] = field(default_factory=dict)


SagaEvent = Started | Replied | DeadlinePassed | OperatorAction


# ---- effects asked of the coordinator --------------------------------------


@dataclass(frozen=True)
class SendCommand:
    step: str
    command: str
    attempt: int
    compensation: bool


@dataclass(frozen=True)
class ScheduleDeadline:
    seconds: float
    token: str


@dataclass(frozen=True)
class ClearDeadline:
    pass


@dataclass(frozen=True)
class PublishOutcome:
    succeeded: bool


@dataclass(frozen=True)
class DeadLetter:
    step: str
    command: str
    detail: str
    # "compensation" (retried max times) or "action" (an unanswered forward step past the pivot).
    stage: str = "compensation"


Effect = SendCommand | ScheduleDeadline | ClearDeadline | PublishOutcome | DeadLetter


@dataclass(frozen=True)
class LogEntry:
    step: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Decision:
    state: SagaState
    effects: tuple[Effect, ...] = ()
    log: tuple[LogEntry, ...] = ()
    # Set when an operator action was refused (why): the saga is unchanged.
    rejected: str | None = None


def to_json(state: SagaState) -> dict[str, Any]:
    return {
        "session_id": state.session_id,
        "definition_version": state.definition_version,
        "status": state.status.value,
        "cursor": state.cursor,
        "attempt": state.attempt,
        "completed": list(state.completed),
        "to_compensate": list(state.to_compensate),
        "failure": None
        if state.failure is None
        else {
            "reason": state.failure.reason,
            "detail": state.failure.detail,
            "skus": list(state.failure.skus),
        },
        "context": dict(state.context),
        "stuck": state.stuck,
    }


def from_json(raw: Mapping[str, Any]) -> SagaState:
    failure = raw.get("failure")
    return SagaState(
        session_id=raw["session_id"],
        definition_version=int(raw["definition_version"]),
        status=SagaStatus(raw["status"]),
        cursor=int(raw["cursor"]),
        attempt=int(raw["attempt"]),
        completed=tuple(raw.get("completed", ())),
        to_compensate=tuple(raw.get("to_compensate", ())),
        failure=None
        if not failure
        else Failure(failure["reason"], failure["detail"], tuple(failure.get("skus") or ())),
        context=dict(raw.get("context", {})),
        stuck=bool(raw.get("stuck", False)),
    )
