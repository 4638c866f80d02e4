"""Operator actions in the pure saga machine: retry, compensate, skip-step.

Each action either moves the saga (and says so in an ``admin`` log entry) or
is refused (an ``admin-rejected`` entry, ``Decision.rejected`` set, the state
unchanged). The states are pushed through JSON as the coordinator keeps them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from saga.definition import CHECKOUT_V1
from saga.machine import MachineConfig, decide
from saga.state import (
    ClearDeadline,
    DeadLetter,
    DeadlinePassed,
    Decision,
    Failure,
    OperatorAction,
    OperatorKind,
    PublishOutcome,
    Replied,
    SagaEvent,
    SagaState,
    SagaStatus,
    ScheduleDeadline,
    SendCommand,
    Started,
    from_json,
    to_json,
)

SESSION = "cs_admin_1"
CONTEXT: dict[str, Any] = {"total": 100, "currency": "USD", "items": []}
CONFIG = MachineConfig(max_compensation_attempts=2)


class Saga:
    def __init__(self) -> None:
        self.state: SagaState | None = None

    @property
    def now(self) -> SagaState:
        assert self.state is not None
        return self.state

    def feed(self, event: SagaEvent) -> Decision:
        decision = decide(CHECKOUT_V1, CONFIG, self.state, event)
        self.state = from_json(json.loads(json.dumps(to_json(decision.state))))
        assert self.state == decision.state
        return decision

    def ok(self, *commands: str, **data: Any) -> None:
        for command in commands:
            self.feed(Replied(command, True, data))

    def deadline(self) -> Decision:
        return self.feed(DeadlinePassed(self.now.deadline_token))

    def act(self, kind: OperatorKind, reason: str = "incident 42", **data: Any) -> Decision:
        return self.feed(OperatorAction(kind, reason, "alice", data))


def started() -> Saga:
    saga = Saga()
    saga.feed(Started(SESSION, CONTEXT))
    return saga


def stuck_releasing() -> Saga:
    """Payment declined, ReleaseStock never answered: dead-lettered and stuck."""
    saga = started()
    saga.ok("ReserveStock", "CreateOrder")
    saga.feed(Replied("AuthorizePayment", False, failure=Failure("PAYMENT_DECLINED", "no")))
    saga.ok("CancelOrder")
    assert saga.deadline().effects[0] == SendCommand("reserve_stock", "ReleaseStock", 2, True)
    decision = saga.deadline()
    assert any(isinstance(e, DeadLetter) for e in decision.effects)
    assert saga.now.stuck and saga.now.status is SagaStatus.COMPENSATING
    return saga


def sent(decision: Decision) -> list[tuple[str, int, bool]]:
    return [(e.command, e.attempt, e.compensation) for e in decision.effects
            if isinstance(e, SendCommand)]


def kinds(decision: Decision) -> list[str]:
    return [entry.kind for entry in decision.log]


def test_retry_resends_the_action_in_flight_with_a_new_deadline() -> None:
    saga = started()
    saga.ok("ReserveStock")
    decision = saga.act(OperatorKind.RETRY)
    assert sent(decision) == [("CreateOrder", 2, False)]
    assert any(isinstance(e, ScheduleDeadline) and e.token == saga.now.deadline_token
               for e in decision.effects)
    assert decision.rejected is None
    assert decision.log[0].kind == "admin" and decision.log[0].step == "create_order"
    assert "alice" in decision.log[0].detail and "incident 42" in decision.log[0].detail
    saga.ok("CreateOrder")  # the saga goes on as usual
    assert saga.now.completed == ("reserve_stock", "create_order")


def test_retry_unsticks_a_dead_lettered_compensation_with_a_fresh_budget() -> None:
    saga = stuck_releasing()
    decision = saga.act(OperatorKind.RETRY)
    assert sent(decision) == [("ReleaseStock", 1, True)]
    assert not saga.now.stuck and saga.now.status is SagaStatus.COMPENSATING
    # The deadline works again (a stuck saga ignores deadlines).
    assert sent(saga.deadline()) == [("ReleaseStock", 2, True)]
    saga.ok("ReleaseStock")
    assert saga.now.status is SagaStatus.FAILED
    assert saga.now.failure is not None and saga.now.failure.reason == "PAYMENT_DECLINED"


def test_compensate_before_the_pivot_undoes_done_steps_and_the_one_in_flight() -> None:
    saga = started()
    saga.ok("ReserveStock", "CreateOrder")  # AuthorizePayment in flight
    decision = saga.act(OperatorKind.COMPENSATE, "customer called")
    assert saga.now.status is SagaStatus.COMPENSATING
    assert saga.now.to_compensate == ("authorize_payment", "create_order", "reserve_stock")
    assert sent(decision) == [("VoidPayment", 1, True)]
    assert saga.now.failure == Failure(
        "CANCELLED", "The checkout was cancelled by an operator: customer called")
    saga.ok("VoidPayment", "CancelOrder")
    decision = saga.feed(Replied("ReleaseStock", True))
    assert PublishOutcome(succeeded=False) in decision.effects
    assert saga.now.status is SagaStatus.FAILED


def test_compensate_with_nothing_done_fails_at_once() -> None:
    saga = started()  # ReserveStock in flight: it has a compensation, so it is undone
    decision = saga.act(OperatorKind.COMPENSATE)
    assert sent(decision) == [("ReleaseStock", 1, True)]


def test_compensate_past_the_pivot_is_refused_and_changes_nothing() -> None:
    saga = started()
    saga.ok("ReserveStock", "CreateOrder", "AuthorizePayment")  # CommitStock (pivot) in flight
    before = saga.now
    decision = saga.act(OperatorKind.COMPENSATE)
    assert decision.rejected is not None and "pivot" in decision.rejected
    assert decision.effects == ()
    assert kinds(decision) == ["admin-rejected"]
    assert saga.now == before


def test_compensate_while_compensating_retries_the_compensation() -> None:
    saga = stuck_releasing()
    decision = saga.act(OperatorKind.COMPENSATE)
    assert sent(decision) == [("ReleaseStock", 1, True)]
    assert not saga.now.stuck
    assert kinds(decision)[:2] == ["admin", "admin"]


def test_skip_step_treats_the_action_as_done_and_goes_on() -> None:
    saga = started()
    saga.ok("ReserveStock", "CreateOrder", "AuthorizePayment", "CommitStock", "CapturePayment")
    decision = saga.act(OperatorKind.SKIP_STEP, "confirmed by hand", confirmed_at="2026-01-01T00:00:00+00:00")
    assert saga.now.status is SagaStatus.SUCCEEDED
    assert saga.now.context["confirmed_at"] == "2026-01-01T00:00:00+00:00"
    assert PublishOutcome(succeeded=True) in decision.effects
    assert kinds(decision)[:2] == ["admin", "skipped"]
    # A late reply to the skipped step is a stray and changes nothing.
    late = saga.feed(Replied("ConfirmOrder", True))
    assert late.effects == () and saga.now.status is SagaStatus.SUCCEEDED


def test_skip_step_of_a_stuck_compensation_moves_to_the_next_or_fails() -> None:
    saga = stuck_releasing()  # ReleaseStock is the last compensation
    decision = saga.act(OperatorKind.SKIP_STEP, "released by hand")
    assert saga.now.status is SagaStatus.FAILED and not saga.now.stuck
    assert ClearDeadline() in decision.effects and PublishOutcome(succeeded=False) in decision.effects
    assert [e.step for e in decision.log[:2]] == ["reserve_stock", "reserve_stock"]


def test_skip_step_mid_compensation_sends_the_next_compensation() -> None:
    saga = started()
    saga.ok("ReserveStock", "CreateOrder")
    saga.feed(Replied("AuthorizePayment", False, failure=Failure("PAYMENT_DECLINED", "no")))
    assert saga.now.to_compensate == ("create_order", "reserve_stock")
    decision = saga.act(OperatorKind.SKIP_STEP, "order cancelled by hand")
    assert sent(decision) == [("ReleaseStock", 1, True)]


def test_skip_step_needs_a_reason() -> None:
    saga = started()
    before = saga.now
    decision = saga.act(OperatorKind.SKIP_STEP, "  ")
    assert decision.rejected == "skipping a step needs a reason"
    assert saga.now == before


@pytest.mark.parametrize("kind", list(OperatorKind))
def test_every_action_on_an_ended_saga_is_refused_but_logged(kind: OperatorKind) -> None:
    saga = started()
    saga.feed(Replied("ReserveStock", False, failure=Failure("OUT_OF_STOCK", "gone")))
    assert saga.now.status is SagaStatus.FAILED
    before = saga.now
    decision = saga.act(kind)
    assert decision.rejected is not None and "ended" in decision.rejected
    assert kinds(decision) == ["admin-rejected"] and decision.effects == ()
    assert saga.now == before
