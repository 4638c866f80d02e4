"""Stages: steps that run alongside one another. Version 3 authorizes the
payment while it creates the order, and sends the capture and the
confirmation together after the pivot; ``STAGED`` (tests only) also creates
the order alongside the reservation, a stage of two steps that can both be
compensated. Versions 1 and 2 (one step at a time) are covered by
test_saga_machine.py, which stages must leave passing unchanged."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from unit.test_saga_machine import CONFIG, CONTEXT, DECLINED, Run, sends

from saga.definition import (
    CHECKOUT_V2,
    CHECKOUT_V3,
    CURRENT,
    OnTimeout,
    SagaDefinition,
    Step,
    alongside,
)
from saga.state import ClearDeadline, Failure, PublishOutcome, SagaStatus, ScheduleDeadline

PROMO: dict[str, Any] = {**CONTEXT, "promo_code": "BF10"}
STAGED = alongside(CHECKOUT_V2, 99, "create_order", "confirm_order")


def commands(decision) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.command for s in sends(decision)]


def deadlines(decision) -> list[ScheduleDeadline]:  # type: ignore[no-untyped-def]
    return [e for e in decision.effects if isinstance(e, ScheduleDeadline)]


def stages(definition: SagaDefinition) -> list[list[str]]:
    found, i = [], 0
    while i < len(definition.steps):
        stage = definition.stage(i)
        found.append([definition.steps[j].name for j in stage])
        i = stage[-1] + 1
    return found


def test_version_3_is_current_version_2_in_five_stages() -> None:
    assert CURRENT is CHECKOUT_V3
    assert sorted(s.name for s in CHECKOUT_V3.steps) == sorted(s.name for s in CHECKOUT_V2.steps)
    assert stages(CHECKOUT_V3) == [["apply_promo"], ["reserve_stock"],
                                   ["authorize_payment", "create_order"], ["commit_stock"],
                                   ["capture_payment", "confirm_order"]]
    assert stages(STAGED)[1] == ["reserve_stock", "create_order"]


def test_a_stage_is_sent_at_once_with_one_deadline() -> None:
    run = Run(STAGED, CONFIG)
    first = run.start()
    assert commands(first) == ["ReserveStock", "CreateOrder"]
    assert [d.seconds for d in deadlines(first)] == [20.0]
    assert [(e.step, e.kind) for e in first.log][-2:] == [("reserve_stock", "command"),
                                                         ("create_order", "command")]


@pytest.mark.parametrize("first, second", [("ReserveStock", "CreateOrder"),
                                           ("CreateOrder", "ReserveStock")])
def test_the_saga_moves_on_when_the_whole_stage_has_answered(first: str, second: str) -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    waiting = run.ok(first)
    assert waiting.effects == () and run.now.status is SagaStatus.RUNNING
    assert commands(run.ok(second)) == ["AuthorizePayment"]


@pytest.mark.parametrize("order", list(itertools.permutations(["CapturePayment", "ConfirmOrder"])))
def test_capture_and_confirmation_go_out_together_and_the_saga_ends_after_both(
        order: tuple[str, str]) -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    run.ok("ReserveStock")
    run.ok("CreateOrder")
    run.ok("AuthorizePayment")
    assert commands(run.ok("CommitStock")) == ["CapturePayment", "ConfirmOrder"]
    assert run.ok(order[0]).effects == ()
    last = run.ok(order[1])
    assert run.now.status is SagaStatus.SUCCEEDED
    assert ClearDeadline() in last.effects and PublishOutcome(succeeded=True) in last.effects


def test_a_failed_step_undoes_its_sibling_still_in_flight() -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    decision = run.fail("ReserveStock", Failure("OUT_OF_STOCK", "gone"))
    # The order may have been created meanwhile: it is cancelled; nothing was held.
    assert commands(decision) == ["CancelOrder"]
    assert run.now.to_compensate == ("create_order",)
    run.ok("CreateOrder")  # the late answer: cancelled again (idempotent), never kept
    run.ok("CancelOrder")
    assert run.now.status is SagaStatus.FAILED
    assert run.now.failure is not None and run.now.failure.reason == "OUT_OF_STOCK"


def test_a_failure_after_the_sibling_answered_undoes_it_too() -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    run.ok("CreateOrder")
    assert commands(run.fail("ReserveStock", Failure("PRICE_CHANGED", "moved"))) == ["CancelOrder"]


def test_compensation_goes_in_reverse_definition_order_whatever_the_reply_order() -> None:
    for first, second in itertools.permutations(["ReserveStock", "CreateOrder"]):
        run = Run(STAGED, CONFIG)
        run.start()
        run.ok(first)
        run.ok(second)
        run.fail("AuthorizePayment", DECLINED)
        assert run.now.to_compensate == ("create_order", "reserve_stock")


def test_a_deadline_re_sends_only_the_steps_that_have_not_answered() -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    run.ok("ReserveStock")
    decision = run.deadline()
    assert commands(decision) == ["CreateOrder"]
    assert [s.attempt for s in sends(decision)] == [2]
    assert commands(run.ok("CreateOrder")) == ["AuthorizePayment"]


def test_past_the_pivot_a_failed_step_of_the_stage_is_retried_never_compensated() -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    for command in ("ReserveStock", "CreateOrder", "AuthorizePayment", "CommitStock"):
        run.ok(command)
    assert run.fail("ConfirmOrder", Failure("INVALID_REQUEST", "busy")).effects == ()
    run.ok("CapturePayment")
    assert commands(run.deadline()) == ["ConfirmOrder"]
    run.ok("ConfirmOrder")
    assert run.now.status is SagaStatus.SUCCEEDED


def test_with_a_promo_code_the_promo_step_comes_first_alone() -> None:
    run = Run(STAGED, CONFIG)
    assert commands(run.start(PROMO)) == ["ApplyPromo"]
    assert commands(run.ok("ApplyPromo", discount=100, total=3898)) == ["ReserveStock", "CreateOrder"]


def test_a_duplicate_reply_inside_a_stage_changes_nothing() -> None:
    run = Run(STAGED, CONFIG)
    run.start()
    run.ok("ReserveStock")
    before = run.now
    again = run.ok("ReserveStock")
    assert again.effects == () and run.now == before


def test_only_a_stage_s_first_step_may_fail_on_timeout_and_the_pivot_runs_alone() -> None:
    with pytest.raises(ValueError, match="deadline"):
        SagaDefinition("x", 9, (Step("a", "s", "A"),
                                Step("b", "s", "B", timeout="payment", on_timeout=OnTimeout.FAIL,
                                     alongside=True)))
    # The first step of a stage may fail on its deadline.
    SagaDefinition("x", 9, (Step("a", "s", "A", on_timeout=OnTimeout.FAIL), Step("b", "s", "B", alongside=True)))
    with pytest.raises(ValueError, match="pivot"):
        SagaDefinition("x", 9, (Step("a", "s", "A", pivot=True), Step("b", "s", "B", alongside=True)))
    with pytest.raises(ValueError, match="pivot"):
        SagaDefinition("x", 9, (Step("b", "s", "B", alongside=True),))


def test_version_3_end_to_end_in_five_rounds() -> None:
    run = Run(CHECKOUT_V3, CONFIG)
    assert commands(run.start()) == ["ReserveStock"]
    stage = run.ok("ReserveStock")
    assert commands(stage) == ["AuthorizePayment", "CreateOrder"]
    assert [d.seconds for d in deadlines(stage)] == [30.0]  # the payment's deadline leads
    run.ok("CreateOrder")
    assert commands(run.ok("AuthorizePayment", authorization_id="au_1")) == ["CommitStock"]
    assert commands(run.ok("CommitStock")) == ["CapturePayment", "ConfirmOrder"]
    run.ok("ConfirmOrder")
    run.ok("CapturePayment")
    assert run.now.status is SagaStatus.SUCCEEDED


def test_version_3_a_decline_cancels_the_order_then_releases_the_stock() -> None:
    run = Run(CHECKOUT_V3, CONFIG)
    run.start()
    run.ok("ReserveStock")
    run.ok("CreateOrder")
    assert commands(run.fail("AuthorizePayment", DECLINED)) == ["CancelOrder"]
    assert run.now.to_compensate == ("create_order", "reserve_stock")


def test_version_3_a_payment_timeout_undoes_the_order_in_flight_too() -> None:
    run = Run(CHECKOUT_V3, CONFIG)
    run.start()
    run.ok("ReserveStock")
    decision = run.deadline()
    assert (decision.log[0].step, decision.log[0].kind) == ("authorize_payment", "timeout")
    assert run.now.failure is not None and run.now.failure.reason == "PAYMENT_TIMEOUT"
    # Both may have happened: the order is cancelled, the authorization voided.
    assert run.now.to_compensate == ("authorize_payment", "create_order", "reserve_stock")


def test_version_3_once_paid_an_unanswered_order_is_re_sent_not_failed() -> None:
    run = Run(CHECKOUT_V3, CONFIG)
    run.start()
    run.ok("ReserveStock")
    run.ok("AuthorizePayment", authorization_id="au_1")
    decision = run.deadline()
    assert commands(decision) == ["CreateOrder"] and run.now.status is SagaStatus.RUNNING
    assert [d.seconds for d in deadlines(decision)] == [40.0]  # the step timeout, backed off
