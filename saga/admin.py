"""Operator actions on sagas, and the query that finds the ones needing them.

A saga is *stuck* when it cannot end by itself, or has not for too long:
- its compensation kept failing and was dead-lettered (the ``stuck`` flag);
- its deadline passed more than ``grace`` seconds ago and no timer moved it;
- it has no deadline although it has not ended;
- the step in flight was sent ``min_attempts`` times or more (each attempt
  means the previous deadline passed unanswered);
- it has been running for longer than ``older_than`` seconds (when given).

``saga retry|compensate|skip-step`` feed an ``OperatorAction`` through the
coordinator, so the pure machine decides and the coordinator carries the
decision out in one transaction (state, step log, outbox) exactly as for any
other event. A refused action is logged too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from messaging.errors import CheckoutSagaError, PermanentError
from saga.coordinator import Coordinator
from saga.definition import DEFINITIONS
from saga.repository import SagaMovedOn
from saga.state import OperatorAction, OperatorKind, SagaStatus, from_json


class UnknownSaga(CheckoutSagaError, LookupError):
    """No saga exists for the checkout session."""


@dataclass(frozen=True)
class ActionResult:
    session_id: str
    action: str
    applied: bool
    status: str
    stuck: bool
    detail: str  # the log entries the action wrote, or why it was refused

    def as_json(self) -> dict[str, Any]:
        return {"checkout_session_id": self.session_id, "action": self.action,
                "applied": self.applied, "status": self.status, "stuck": self.stuck,
                "detail": self.detail}


async def act(
    coordinator: Coordinator, session_id: str, kind: OperatorKind, reason: str, operator: str
) -> ActionResult:
    # The only step-reply value the outcome events need: a skipped confirmation
    # is confirmed now (a real ConfirmOrder reply later overrides it).
    data = {"confirmed_at": datetime.now(UTC).isoformat()} if kind is OperatorKind.SKIP_STEP else {}
    event = OperatorAction(kind, reason, operator, data)
    for _ in range(20):  # a reply or a deadline may win the optimistic race: decide again
        try:
            decision = await coordinator.feed(session_id, event)
            break
        except SagaMovedOn:
            continue
        except PermanentError as exc:
            raise UnknownSaga(session_id) from exc
    else:
        raise RuntimeError(f"saga {session_id} kept moving; try again")
    state = decision.state
    detail = decision.rejected or "; ".join(f"{e.step}: {e.kind}: {e.detail}" for e in decision.log)
    return ActionResult(session_id, kind.value, decision.rejected is None, state.status.value,
                        state.stuck, detail)


_STUCK_SQL = """
SELECT checkout_session_id, status, state, deadline_at, created_at, updated_at,
       extract(epoch FROM now() - deadline_at) AS overdue,
       extract(epoch FROM now() - created_at) AS age
FROM saga.instances
WHERE status IN ('RUNNING', 'COMPENSATING')
  AND ($1 OR coalesce((state->>'stuck')::boolean, false)
       OR deadline_at IS NULL
       OR deadline_at < now() - make_interval(secs => $2)
       OR (state->>'attempt')::int >= $3
       OR ($4::float8 IS NOT NULL AND created_at < now() - make_interval(secs => $4)))
ORDER BY created_at
LIMIT $5
"""


async def list_sagas(
    conn: asyncpg.Connection,
    *,
    stuck_only: bool = True,
    grace: float = 30.0,
    min_attempts: int = 3,
    older_than: float | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Sagas that have not ended (all of them, or only the stuck ones), oldest first."""
    rows = await conn.fetch(_STUCK_SQL, not stuck_only, grace, min_attempts, older_than, limit)
    return [_describe(r, grace, min_attempts, older_than) for r in rows]


def _describe(
    row: asyncpg.Record, grace: float, min_attempts: int, older_than: float | None
) -> dict[str, Any]:
    state = from_json(json.loads(row["state"]))
    definition = DEFINITIONS[state.definition_version]
    step, command = "-", "-"
    if state.status is SagaStatus.RUNNING and 0 <= state.cursor < len(definition.steps):
        s = definition.steps[state.cursor]
        step, command = s.name, s.action
    elif state.status is SagaStatus.COMPENSATING and state.cursor < len(state.to_compensate):
        s = definition.steps[definition.index_of(state.to_compensate[state.cursor])]
        step, command = s.name, s.compensation or "-"
    why: list[str] = []
    if state.stuck:
        why.append("compensation dead-lettered" if state.status is SagaStatus.COMPENSATING
                   else "action dead-lettered after the pivot")
    overdue = row["overdue"]
    if row["deadline_at"] is None:
        why.append("no deadline")
    elif overdue is not None and float(overdue) > grace:
        why.append(f"deadline passed {float(overdue):.0f}s ago")
    if state.attempt >= min_attempts:
        why.append(f"{command} sent {state.attempt} times")
    age = float(row["age"])
    if older_than is not None and age > older_than:
        why.append(f"running for {age:.0f}s")
    return {
        "checkout_session_id": row["checkout_session_id"],
        "status": row["status"],
        "step": step,
        "command": command,
        "attempt": state.attempt,
        "stuck": state.stuck,
        "failure": None if state.failure is None else state.failure.reason,
        "deadline_at": row["deadline_at"].isoformat() if row["deadline_at"] else None,
        "created_at": row["created_at"].isoformat(),
        "age_seconds": round(age, 1),
        "why": why,
    }
