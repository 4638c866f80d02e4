"""An action that is never answered is re-sent a bounded number of times.

A service dead-letters a command it cannot handle and sends no reply; the
step's deadline re-sends it. Before the pivot, after ``max_action_attempts``
sends the saga gives up: it undoes what it did (the unanswered step too, since
it may still happen) and fails. At or after the pivot nothing may be undone:
the commands are dead-lettered for an operator and the saga is stuck until an
answer comes (late, or after a redrive) or an operator acts.
"""

from __future__ import annotations

from typing import Any

import pytest
from unit.test_saga_machine import CONTEXT, Run, sends

from saga.definition import CHECKOUT_V1, CHECKOUT_V2, CHECKOUT_V3
from saga.machine import MachineConfig
from saga.state import (
    ClearDeadline,
    DeadLetter,
    OperatorAction,
    OperatorKind,
    PublishOutcome,
    SagaStatus,
    ScheduleDeadline,
    SendCommand,
)

PROMO: dict[str, Any] = {**CONTEXT, "promo_code": "BF10"}
CONFIG = MachineConfig(max_action_attempts=3)


def unanswered(run: Run, times: int) -> list[SendCommand]:
    """Let the deadline pass ``times`` times; every command sent meanwhile."""
    sent = []
    for _ in range(times):
        sent += sends(run.deadline())
    return sent


def test_an_apply_promo_never_answered_is_sent_max_times_then_the_checkout_fails() -> None:
    run = Run(CHECKOUT_V2, CONFIG)
    first = run.start(PROMO)
    resent = unanswered(run, 2)
    assert [(s.command, s.attempt) for s in sends(first) + resent] == [
        ("ApplyPromo", 1), ("ApplyPromo", 2), ("ApplyPromo", 3)]
    assert run.now.status is SagaStatus.RUNNING

    gave_up = run.deadline()  # the third send went unanswered too
    assert run.now.status is SagaStatus.COMPENSATING
    assert run.now.to_compensate == ("apply_promo",)  # it may still land: give its use back
    assert sends(gave_up) == [SendCommand("apply_promo", "ReleasePromo", 1, True)]
    assert [e.kind for e in gave_up.log] == ["gave-up", "compensating", "command"]
    failure = run.now.failure
    assert failure is not None and failure.reason == "INVALID_REQUEST"
    assert "ApplyPromo got no answer after 3 attempts" in failure.detail

    done = run.ok("ReleasePromo")
    assert run.now.status is SagaStatus.FAILED
    assert PublishOutcome(succeeded=False) in done.effects


def test_giving_up_mid_saga_undoes_the_unanswered_step_first_then_the_done_ones() -> None:
    run = Run(CHECKOUT_V1, CONFIG)
    run.start()
    run.ok("ReserveStock")  # CreateOrder in flight, never answered
    unanswered(run, 2)
    decision = run.deadline()
    assert run.now.to_compensate == ("create_order", "reserve_stock")
    assert sends(decision) == [SendCommand("create_order", "CancelOrder", 1, True)]
    run.ok("CancelOrder")
    run.ok("ReleaseStock")
    assert run.now.status is SagaStatus.FAILED
    assert run.now.failure is not None and run.now.failure.reason == "INVALID_REQUEST"


def test_an_answer_before_the_last_deadline_goes_on_as_usual() -> None:
    run = Run(CHECKOUT_V1, CONFIG)
    run.start()
    unanswered(run, 2)  # three sends
    run.ok("ReserveStock")
    assert run.now.status is SagaStatus.RUNNING and run.now.attempt == 1
    assert sends(run.decisions[-1]) == [SendCommand("create_order", "CreateOrder", 1, False)]


def test_the_payment_step_still_fails_on_its_first_deadline() -> None:
    run = Run(CHECKOUT_V1, MachineConfig(max_action_attempts=1))
    run.start()
    run.ok("ReserveStock")
    run.ok("CreateOrder")
    run.deadline()
    assert run.now.failure is not None and run.now.failure.reason == "PAYMENT_TIMEOUT"


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_budget_comes_from_the_config(attempts: int) -> None:
    run = Run(CHECKOUT_V1, MachineConfig(max_action_attempts=attempts))
    first = run.start()
    resent = unanswered(run, attempts - 1)
    assert len(sends(first) + resent) == attempts
    assert run.now.status is SagaStatus.RUNNING
    run.deadline()
    assert run.now.status is SagaStatus.COMPENSATING


@pytest.mark.parametrize("action", ["CommitStock", "CapturePayment", "ConfirmOrder"])
def test_past_the_pivot_an_unanswered_action_is_dead_lettered_and_the_saga_stuck(
    action: str,
) -> None:
    run = Run(CHECKOUT_V1, CONFIG)
    run.succeed_until(action)
    unanswered(run, 2)
    decision = run.deadline()
    step = CHECKOUT_V1.steps[run.now.cursor]
    assert run.now.status is SagaStatus.RUNNING and run.now.stuck
    assert decision.effects == (
        ClearDeadline(),
        DeadLetter(step.name, action, f"no answer to {action} after 3 attempts", stage="action"),
    )
    assert [e.kind for e in decision.log] == ["gave-up"]
    assert run.deadline().effects == ()  # nothing re-sends it now
    # A late answer (a redrive) moves the saga on, and it still ends.
    for name in run.actions[run.actions.index(action):]:
        run.ok(name)
        assert not run.now.stuck
    assert run.now.status is SagaStatus.SUCCEEDED


def test_an_operator_retry_of_a_stuck_forward_step_is_one_more_send() -> None:
    run = Run(CHECKOUT_V1, CONFIG)
    run.succeed_until("CapturePayment")
    unanswered(run, 3)
    assert run.now.stuck
    retried = run.feed(OperatorAction(OperatorKind.RETRY, "the gateway is back"))
    assert sends(retried) == [SendCommand("capture_payment", "CapturePayment", 4, False)]
    assert not run.now.stuck
    assert any(isinstance(e, ScheduleDeadline) for e in retried.effects)
    run.deadline()  # unanswered again: stuck again, not re-sent forever
    assert run.now.stuck


def test_a_stuck_stage_of_two_steps_moves_on_only_when_both_are_answered() -> None:
    run = Run(CHECKOUT_V3, CONFIG)
    run.succeed_until("CapturePayment")  # ConfirmOrder alongside it
    unanswered(run, 2)
    decision = run.deadline()
    assert [e.command for e in decision.effects if isinstance(e, DeadLetter)] == [
        "CapturePayment", "ConfirmOrder"]
    run.ok("CapturePayment")
    assert run.now.stuck  # ConfirmOrder still unanswered, and nothing re-sends it
    run.ok("ConfirmOrder", confirmed_at="2030-01-01T00:00:00+00:00")
    assert run.now.status is SagaStatus.SUCCEEDED and not run.now.stuck
