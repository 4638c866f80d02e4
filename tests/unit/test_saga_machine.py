"""The pure saga state machine, path by path, plus a property test over
random interleavings of replies and deadlines.

Every state a test meets is pushed through ``to_json`` -> JSON text ->
``from_json`` and must come back equal, because the coordinator keeps the
saga only in that form between two events.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.definition import CHECKOUT_V1, CHECKOUT_V2, OnTimeout, SagaDefinition, Step
from saga.machine import MachineConfig, decide
from saga.state import (
    ClearDeadline,
    DeadLetter,
    DeadlinePassed,
    Decision,
    Failure,
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

SESSION = "cs_machine_1"
CONTEXT: dict[str, Any] = {"total": 3998, "currency": "USD", "items": [{"sku": "S", "quantity": 2}]}
CONFIG = MachineConfig()  # step 20 s, payment 30 s, cap 60 s, 8 compensation tries, retry 0.5 s
DECLINED = Failure("PAYMENT_DECLINED", "The card was declined.")
ACTIONS = [step.action for step in CHECKOUT_V1.steps]


def roundtrip(state: SagaState) -> SagaState:
    return from_json(json.loads(json.dumps(to_json(state))))


class Run:
    """Feeds one saga event by event; keeps the state the way the coordinator does."""

    def __init__(
        self, definition: SagaDefinition = CHECKOUT_V1, config: MachineConfig = CONFIG
    ) -> None:
        self.definition = definition
        self.config = config
        self.state: SagaState | None = None
        self.decisions: list[Decision] = []

    @property
    def now(self) -> SagaState:
        assert self.state is not None
        return self.state

    def feed(self, event: SagaEvent) -> Decision:
        decision = decide(self.definition, self.config, self.state, event)
        assert roundtrip(decision.state) == decision.state
        self.state = roundtrip(decision.state)
        self.decisions.append(decision)
        return decision

    def start(self, context: dict[str, Any] | None = None) -> Decision:
        return self.feed(Started(SESSION, CONTEXT if context is None else context))

    @property
    def actions(self) -> list[str]:
        """The actions this saga runs, in order (optional steps per its context)."""
        return [s.action for s in self.runnable()]

    def runnable(self) -> list[Step]:
        ctx = self.now.context
        return [s for s in self.definition.steps if s.only_if is None or ctx.get(s.only_if)]

    def ok(self, command: str, **data: Any) -> Decision:
        return self.feed(Replied(command, True, data))

    def fail(self, command: str, failure: Failure | None = DECLINED) -> Decision:
        return self.feed(Replied(command, False, failure=failure))

    def deadline(self, token: str | None = None) -> Decision:
        return self.feed(DeadlinePassed(self.now.deadline_token if token is None else token))

    def succeed_until(self, action: str, context: dict[str, Any] | None = None) -> None:
        """Start and answer every action before ``action`` with success."""
        self.start(context)
        for name in self.actions[: self.actions.index(action)]:
            self.ok(name)
        assert self.in_flight() == action

    def in_flight(self) -> str:
        state = self.now
        if state.status is SagaStatus.RUNNING:
            return self.definition.steps[state.cursor].action
        assert state.status is SagaStatus.COMPENSATING
        step = self.definition.steps[self.definition.index_of(state.to_compensate[state.cursor])]
        assert step.compensation is not None
        return step.compensation


def sends(decision: Decision) -> list[SendCommand]:
    return [e for e in decision.effects if isinstance(e, SendCommand)]


def unchanged(run: Run, decision: Decision, before: SagaState) -> None:
    assert decision.state == before
    assert decision.effects == ()
    assert run.now == before


# ---- the forward path --------------------------------------------------------


def test_start_sends_the_first_command_with_its_deadline() -> None:
    run = Run()
    decision = run.start()
    state = decision.state
    assert (state.session_id, state.status, state.cursor, state.attempt) == (
        SESSION, SagaStatus.RUNNING, 0, 1
    )
    assert state.definition_version == CHECKOUT_V1.version
    assert state.context == CONTEXT and state.completed == ()
    assert decision.effects == (
        SendCommand("reserve_stock", "ReserveStock", 1, compensation=False),
        ScheduleDeadline(20.0, state.deadline_token),
    )


def test_every_step_runs_in_order_with_its_deadline_then_succeeds() -> None:
    run = Run()
    decision = run.start()
    expected_timeouts = {"ReserveStock": 20.0, "CreateOrder": 20.0, "AuthorizePayment": 30.0,
                         "CommitStock": 20.0, "CapturePayment": 20.0, "ConfirmOrder": 20.0}
    tokens = []
    for i, step in enumerate(CHECKOUT_V1.steps):
        assert run.now.status is SagaStatus.RUNNING and run.now.cursor == i
        assert decision.effects == (
            SendCommand(step.name, step.action, 1, compensation=False),
            ScheduleDeadline(expected_timeouts[step.action], run.now.deadline_token),
        )
        tokens.append(run.now.deadline_token)
        decision = run.ok(step.action, **{f"from_{step.name}": i})
        assert run.now.completed == tuple(s.name for s in CHECKOUT_V1.steps[: i + 1])
    assert len(set(tokens)) == len(tokens), "each wait has its own deadline token"
    assert run.now.status is SagaStatus.SUCCEEDED and run.now.status.terminal
    assert decision.effects == (ClearDeadline(), PublishOutcome(succeeded=True))
    # Reply data is merged into the context (order id, confirmed_at, ...).
    assert run.now.context == {**CONTEXT, **{f"from_{s.name}": i for i, s in
                                             enumerate(CHECKOUT_V1.steps)}}


def test_a_second_start_is_ignored() -> None:
    run = Run()
    run.start()
    before = run.now
    unchanged(run, run.start({"other": True}), before)


@pytest.mark.parametrize("event", [Replied("ReserveStock", True), DeadlinePassed("RUNNING:0:1")])
def test_an_event_for_a_saga_never_started_is_a_bug(event: SagaEvent) -> None:
    with pytest.raises(ValueError):
        decide(CHECKOUT_V1, CONFIG, None, event)


# ---- failures before and at the pivot ----------------------------------------

FAILING = [
    ("ReserveStock", Failure("OUT_OF_STOCK", "Not enough stock.", ("SKU-1", "SKU-2")), ()),
    ("CreateOrder", Failure("INVALID_REQUEST", "Bad order."), ("ReleaseStock",)),
    ("AuthorizePayment", DECLINED, ("CancelOrder", "ReleaseStock")),
    # The pivot itself may still fail (its hold expired and the stock is gone).
    ("CommitStock", Failure("OUT_OF_STOCK", "Hold expired.", ("SKU-1",)),
     ("VoidPayment", "CancelOrder", "ReleaseStock")),
]


@pytest.mark.parametrize(("action", "failure", "undo"), FAILING, ids=[f[0] for f in FAILING])
def test_a_failing_step_undoes_exactly_the_completed_steps_in_reverse(
    action: str, failure: Failure, undo: tuple[str, ...]
) -> None:
    run = Run()
    run.succeed_until(action)
    decision = run.fail(action, failure)
    for compensation in undo:
        step = CHECKOUT_V1.step_for_compensation(compensation)
        assert step is not None
        assert run.now.status is SagaStatus.COMPENSATING and not run.now.status.terminal
        assert decision.effects == (
            SendCommand(step.name, compensation, 1, compensation=True),
            ScheduleDeadline(20.0, run.now.deadline_token),
        )
        decision = run.ok(compensation)
    assert run.now.status is SagaStatus.FAILED
    assert run.now.failure == failure
    assert decision.effects == (ClearDeadline(), PublishOutcome(succeeded=False))
    # From the failure on, nothing goes forward any more.
    since_failure = run.decisions[-(len(undo) + 1) :]
    assert [s for d in since_failure for s in sends(d) if not s.compensation] == []


def test_a_failure_reply_without_detail_still_fails_with_a_reason() -> None:
    run = Run()
    run.start()
    decision = run.fail("ReserveStock", failure=None)
    assert run.now.status is SagaStatus.FAILED
    assert run.now.failure is not None and run.now.failure.reason == "INVALID_REQUEST"
    assert "ReserveStock" in run.now.failure.detail
    assert decision.effects == (ClearDeadline(), PublishOutcome(succeeded=False))


# ---- the payment deadline and late authorizations ----------------------------


def payment_timed_out(config: MachineConfig = CONFIG) -> tuple[Run, Decision]:
    run = Run(config=config)
    run.succeed_until("AuthorizePayment")
    return run, run.deadline()


def test_the_payment_deadline_fails_with_payment_timeout_and_voids_first() -> None:
    run = Run()
    run.start()
    run.ok("ReserveStock")
    decision = run.ok("CreateOrder")
    assert decision.effects[1] == ScheduleDeadline(30.0, run.now.deadline_token)
    decision = run.deadline()
    assert run.now.status is SagaStatus.COMPENSATING
    assert run.now.failure is not None and run.now.failure.reason == "PAYMENT_TIMEOUT"
    assert "AuthorizePayment" in run.now.failure.detail and "30 seconds" in run.now.failure.detail
    # The authorization may have happened after all: it is undone first.
    assert run.now.to_compensate == ("authorize_payment", "create_order", "reserve_stock")
    assert sends(decision) == [SendCommand("authorize_payment", "VoidPayment", 1, True)]
    for compensation in ("VoidPayment", "CancelOrder", "ReleaseStock"):
        assert run.in_flight() == compensation
        decision = run.ok(compensation)
    final = run.now
    assert final.status is SagaStatus.FAILED
    assert final.failure is not None and final.failure.reason == "PAYMENT_TIMEOUT"
    assert decision.effects == (ClearDeadline(), PublishOutcome(succeeded=False))


def test_the_payment_timeout_comes_from_the_config() -> None:
    config = MachineConfig(timeouts={"step": 20.0, "payment": 5.0})
    run = Run(config=config)
    run.start()
    run.ok("ReserveStock")
    assert run.ok("CreateOrder").effects[1] == ScheduleDeadline(5.0, run.now.deadline_token)
    run.deadline()
    assert run.now.failure is not None and "5 seconds" in run.now.failure.detail


@pytest.mark.parametrize("voids_done", [0, 1, 2])
def test_a_late_authorization_while_compensating_is_voided(voids_done: int) -> None:
    run, _ = payment_timed_out()
    for compensation in ("VoidPayment", "CancelOrder")[:voids_done]:
        run.ok(compensation)
    before = run.now
    decision = run.ok("AuthorizePayment", authorization_id="auth_late")
    assert decision.effects == (SendCommand("authorize_payment", "VoidPayment", 1, True),)
    assert decision.state == before, "a late reply does not move the saga"
    assert [e.kind for e in decision.log] == ["late-reply"]


def test_a_late_authorization_after_the_saga_failed_is_voided() -> None:
    run, _ = payment_timed_out()
    for compensation in ("VoidPayment", "CancelOrder", "ReleaseStock"):
        run.ok(compensation)
    failed = run.now
    assert failed.status is SagaStatus.FAILED
    for _ in range(2):  # and again for a redelivery of the late reply
        decision = run.ok("AuthorizePayment")
        assert decision.effects == (SendCommand("authorize_payment", "VoidPayment", 1, True),)
        assert decision.state == failed


def test_a_late_decline_after_the_timeout_changes_nothing() -> None:
    run, _ = payment_timed_out()
    before = run.now
    unchanged(run, run.fail("AuthorizePayment"), before)


def test_a_duplicate_authorization_of_a_succeeded_saga_is_not_voided() -> None:
    run = Run()
    run.succeed_until("ConfirmOrder")
    run.ok("ConfirmOrder")
    done = run.now
    for action in ACTIONS:
        unchanged(run, run.ok(action), done)


# ---- duplicates and stale deadlines ------------------------------------------


@pytest.mark.parametrize("completed", range(len(ACTIONS) - 1))
def test_a_duplicate_reply_of_a_completed_step_changes_nothing(completed: int) -> None:
    run = Run()
    run.succeed_until(ACTIONS[completed + 1])
    before = run.now
    for dup in ACTIONS[: completed + 1]:
        unchanged(run, run.ok(dup), before)
        unchanged(run, run.fail(dup), before)


def test_duplicates_while_compensating_change_nothing() -> None:
    run = Run()
    run.succeed_until("AuthorizePayment")
    run.fail("AuthorizePayment")
    before = run.now
    # Completed steps replying again, the failing step failing again, and a
    # reply to a compensation that is not the one in flight.
    for event in (Replied("ReserveStock", True), Replied("CreateOrder", True),
                  Replied("AuthorizePayment", False, failure=DECLINED),
                  Replied("ReleaseStock", True), Replied("VoidPayment", True)):
        unchanged(run, run.feed(event), before)


def test_a_duplicate_last_compensation_reply_publishes_once() -> None:
    run = Run()
    run.succeed_until("CreateOrder")
    run.fail("CreateOrder")
    assert run.ok("ReleaseStock").effects == (ClearDeadline(), PublishOutcome(False))
    before = run.now
    unchanged(run, run.ok("ReleaseStock"), before)


@pytest.mark.parametrize("command", ["NoSuchCommand", "ReleaseStock", "VoidPayment"])
def test_an_unexpected_reply_while_running_changes_nothing(command: str) -> None:
    run = Run()
    run.succeed_until("CommitStock")
    before = run.now
    unchanged(run, run.ok(command), before)


def test_a_stale_deadline_token_is_ignored() -> None:
    run = Run()
    run.start()
    first = run.now.deadline_token
    run.ok("ReserveStock")
    before = run.now
    unchanged(run, run.deadline(first), before)
    unchanged(run, run.deadline("garbage"), before)
    unchanged(run, run.deadline(""), before)
    # A retry makes the previous attempt's deadline stale too.
    run.deadline()
    retried = run.now
    assert retried.attempt == 2
    unchanged(run, run.deadline(before.deadline_token), retried)


@pytest.mark.parametrize("finish", ["succeed", "fail"])
def test_deadlines_after_the_end_are_ignored(finish: str) -> None:
    run = Run()
    if finish == "succeed":
        run.succeed_until("ConfirmOrder")
        run.ok("ConfirmOrder")
    else:
        run.start()
        run.fail("ReserveStock")
    done = run.now
    assert done.status.terminal
    tokens = {done.deadline_token, "RUNNING:0:1", f"RUNNING:{len(ACTIONS) - 1}:1"}
    for token in tokens:
        unchanged(run, run.deadline(token), done)


# ---- retry policy ------------------------------------------------------------


def test_a_retry_step_timeout_resends_with_growing_capped_deadlines() -> None:
    run = Run()
    run.start()
    seen = []
    for attempt, seconds in [(2, 40.0), (3, 60.0), (4, 60.0), (5, 60.0)]:
        decision = run.deadline()
        assert run.now.status is SagaStatus.RUNNING and run.now.cursor == 0
        assert decision.effects == (
            SendCommand("reserve_stock", "ReserveStock", attempt, compensation=False),
            ScheduleDeadline(seconds, run.now.deadline_token),
        )
        seen.append(run.now.deadline_token)
    assert len(set(seen)) == len(seen)
    # Any attempt's answer completes the step.
    run.ok("ReserveStock")
    assert run.now.completed == ("reserve_stock",) and run.now.attempt == 1


@pytest.mark.parametrize(
    ("step_timeout", "cap", "expected"),
    [(20.0, 45.0, [20.0, 40.0, 45.0, 45.0]), (100.0, 60.0, [100.0, 100.0, 100.0]),
     (1.0, 3.0, [1.0, 2.0, 3.0, 3.0])],
)
def test_retry_deadlines_double_up_to_the_cap_but_never_below_the_step_timeout(
    step_timeout: float, cap: float, expected: list[float]
) -> None:
    run = Run(config=MachineConfig(timeouts={"step": step_timeout, "payment": 30.0},
                                   retry_backoff_cap=cap))
    got = [run.start().effects[1]]
    got += [run.deadline().effects[1] for _ in expected[1:]]
    assert [d.seconds for d in got if isinstance(d, ScheduleDeadline)] == expected


def test_a_step_retried_for_days_keeps_a_capped_deadline() -> None:
    # With a budget of attempts that large, a step is retried for days.
    config = MachineConfig(max_action_attempts=10**6)
    state = SagaState(SESSION, 1, SagaStatus.RUNNING, cursor=4, attempt=5000,
                      completed=tuple(s.name for s in CHECKOUT_V1.steps[:4]))
    decision = decide(CHECKOUT_V1, config, state, DeadlinePassed(state.deadline_token))
    assert decision.effects == (
        SendCommand("capture_payment", "CapturePayment", 5001, compensation=False),
        ScheduleDeadline(60.0, decision.state.deadline_token),
    )


# ---- after the pivot: forward only -------------------------------------------


@pytest.mark.parametrize("action", ["CapturePayment", "ConfirmOrder"])
def test_a_forward_only_step_that_fails_is_retried_never_compensated(action: str) -> None:
    run = Run()
    run.succeed_until(action)
    for attempt in (2, 3, 4):
        before = run.now
        decision = run.fail(action, Failure("CANCELLED", "transient"))
        assert decision.state == before and decision.effects == ()
        assert [e.kind for e in decision.log] == ["failed", "retry-scheduled"]
        # The deadline already scheduled for the step re-sends it.
        decision = run.deadline()
        assert sends(decision) == [SendCommand(CHECKOUT_V1.steps[before.cursor].name,
                                               action, attempt, False)]
    run.ok(action)
    assert run.now.status in (SagaStatus.RUNNING, SagaStatus.SUCCEEDED)
    assert all(not s.compensation for d in run.decisions for s in sends(d))
    assert all(d.state.status is not SagaStatus.COMPENSATING for d in run.decisions)


@pytest.mark.parametrize("action", ["CommitStock", "CapturePayment", "ConfirmOrder"])
def test_a_timeout_at_or_after_the_pivot_is_retried(action: str) -> None:
    run = Run()
    run.succeed_until(action)
    for attempt in (2, 3):
        decision = run.deadline()
        assert run.now.status is SagaStatus.RUNNING
        assert [(s.command, s.attempt, s.compensation) for s in sends(decision)] == [
            (action, attempt, False)
        ]


def test_a_fail_policy_step_after_the_pivot_is_retried_on_timeout() -> None:
    definition = SagaDefinition("t", 9, (
        Step("a", "svc", "A", "UndoA"),
        Step("p", "svc", "P", pivot=True),
        Step("late", "svc", "Late", on_timeout=OnTimeout.FAIL, timeout_reason="PAYMENT_TIMEOUT"),
    ))
    run = Run(definition)
    run.start()
    run.ok("A")
    run.ok("P")
    decision = run.deadline()
    assert run.now.status is SagaStatus.RUNNING and run.now.failure is None
    assert sends(decision) == [SendCommand("late", "Late", 2, False)]


def test_a_fail_policy_timeout_on_a_step_without_compensation_undoes_the_rest() -> None:
    definition = SagaDefinition("t", 9, (
        Step("a", "svc", "A", "UndoA"),
        Step("b", "svc", "B", on_timeout=OnTimeout.FAIL),
        Step("p", "svc", "P", pivot=True),
    ))
    run = Run(definition)
    run.start()
    run.ok("A")
    run.deadline()
    assert run.now.to_compensate == ("a",)
    # No timeout_reason on the step: a generic reason, never an empty one.
    assert run.now.failure is not None and run.now.failure.reason == "INVALID_REQUEST"
    assert run.ok("UndoA").effects == (ClearDeadline(), PublishOutcome(False))


# ---- compensations that fail ---------------------------------------------------


def declined_at_payment(config: MachineConfig = CONFIG) -> Run:
    run = Run(config=config)
    run.succeed_until("AuthorizePayment")
    run.fail("AuthorizePayment")
    assert run.in_flight() == "CancelOrder"
    return run


def test_a_failed_compensation_is_retried_after_the_retry_delay() -> None:
    run = declined_at_payment()
    before = run.now
    decision = run.fail("CancelOrder", Failure("INVALID_REQUEST", "db down"))
    assert decision.state == before
    assert decision.effects == (ScheduleDeadline(0.5, before.deadline_token),)
    decision = run.deadline()
    assert decision.effects == (
        SendCommand("create_order", "CancelOrder", 2, compensation=True),
        ScheduleDeadline(40.0, run.now.deadline_token),
    )
    # Succeeding on the retry moves on to the next compensation, attempt 1.
    decision = run.ok("CancelOrder")
    assert sends(decision) == [SendCommand("reserve_stock", "ReleaseStock", 1, True)]
    assert run.ok("ReleaseStock").effects == (ClearDeadline(), PublishOutcome(False))
    assert run.now.failure == DECLINED


def test_a_compensation_without_an_answer_is_resent_with_backoff() -> None:
    run = declined_at_payment()
    for attempt, seconds in [(2, 40.0), (3, 60.0), (4, 60.0)]:
        assert run.deadline().effects == (
            SendCommand("create_order", "CancelOrder", attempt, compensation=True),
            ScheduleDeadline(seconds, run.now.deadline_token),
        )
    assert run.now.attempt == 4 and run.now.cursor == 0


def exhaust(run: Run) -> Decision:
    """Let the compensation in flight fail until the machine gives up on it."""
    while True:
        run.fail(run.in_flight(), Failure("INVALID_REQUEST", "still failing"))
        decision = run.deadline()
        if run.now.stuck:
            return decision
        assert sends(decision)[0].attempt == run.now.attempt


def test_a_compensation_failing_max_times_is_dead_lettered_and_the_saga_stuck() -> None:
    run = declined_at_payment()
    decision = exhaust(run)
    stuck = run.now
    assert stuck.attempt == CONFIG.max_compensation_attempts == 8
    assert stuck.status is SagaStatus.COMPENSATING and stuck.stuck
    assert decision.effects[0] == ClearDeadline()
    assert isinstance(decision.effects[1], DeadLetter) and len(decision.effects) == 2
    assert (decision.effects[1].step, decision.effects[1].command) == ("create_order", "CancelOrder")
    assert "8 attempts" in decision.effects[1].detail
    assert "dead-letter" in [e.kind for e in decision.log]
    # Never silently: no outcome is published for a stuck saga ...
    assert not any(isinstance(e, PublishOutcome) for d in run.decisions for e in d.effects)
    # ... and no timer retries it any more.
    for token in (stuck.deadline_token, "COMPENSATING:0:1", "COMPENSATING:1:1"):
        unchanged(run, run.deadline(token), stuck)
    # Another failure answer (a redrive that failed again) schedules nothing.
    decision = run.fail("CancelOrder")
    assert decision.effects == () and run.now.stuck


def test_a_stuck_compensation_that_finally_succeeds_finishes_the_saga() -> None:
    # The last attempt answers after its deadline, or an operator redrives the
    # dead-lettered command: the saga must still end in CheckoutFailed.
    run = declined_at_payment()
    exhaust(run)
    decision = run.ok("CancelOrder")
    assert not run.now.stuck and run.now.status is SagaStatus.COMPENSATING
    assert decision.effects == (
        SendCommand("reserve_stock", "ReleaseStock", 1, compensation=True),
        ScheduleDeadline(20.0, run.now.deadline_token),
    )
    assert run.ok("ReleaseStock").effects == (ClearDeadline(), PublishOutcome(False))
    final = run.now
    assert final.status is SagaStatus.FAILED and final.failure == DECLINED


def test_the_compensation_attempt_limit_comes_from_the_config() -> None:
    run = declined_at_payment(MachineConfig(max_compensation_attempts=2))
    exhaust(run)
    assert run.now.stuck and run.now.attempt == 2


def test_a_stuck_saga_still_voids_a_late_authorization() -> None:
    run, _ = payment_timed_out(MachineConfig(max_compensation_attempts=1))
    exhaust(run)
    assert run.now.stuck and run.in_flight() == "VoidPayment"
    decision = run.ok("AuthorizePayment")
    assert decision.effects == (SendCommand("authorize_payment", "VoidPayment", 1, True),)


# ---- version 2: the promo code step ----------------------------------------------

PROMO = {**CONTEXT, "promo_code": "BF10"}


def test_v2_without_a_promo_code_runs_the_v1_steps() -> None:
    run = Run(CHECKOUT_V2)
    decision = run.start({**CONTEXT, "promo_code": None})
    assert sends(decision) == [SendCommand("reserve_stock", "ReserveStock", 1, False)]
    for action in ACTIONS:
        decision = run.ok(action)
    assert run.now.status is SagaStatus.SUCCEEDED
    assert run.now.completed == tuple(s.name for s in CHECKOUT_V1.steps)
    assert run.now.definition_version == 2


def test_v2_with_a_promo_code_applies_it_first() -> None:
    run = Run(CHECKOUT_V2)
    decision = run.start(PROMO)
    assert decision.effects == (
        SendCommand("apply_promo", "ApplyPromo", 1, False),
        ScheduleDeadline(20.0, run.now.deadline_token),
    )
    decision = run.ok("ApplyPromo", discount=400, total=3598)
    assert run.now.context["total"] == 3598 and run.now.context["discount"] == 400
    assert sends(decision) == [SendCommand("reserve_stock", "ReserveStock", 1, False)]
    for action in ACTIONS:
        decision = run.ok(action)
    assert decision.effects == (ClearDeadline(), PublishOutcome(True))
    assert run.now.completed == ("apply_promo",) + tuple(s.name for s in CHECKOUT_V1.steps)


def test_v2_a_rejected_promo_code_fails_with_nothing_to_undo() -> None:
    run = Run(CHECKOUT_V2)
    run.start(PROMO)
    exhausted = Failure("PROMO_EXHAUSTED", "BF10 has been used up.")
    decision = run.fail("ApplyPromo", exhausted)
    assert decision.effects == (ClearDeadline(), PublishOutcome(False))
    assert run.now.status is SagaStatus.FAILED and run.now.failure == exhausted


def test_v2_a_payment_timeout_gives_the_promo_use_back_last() -> None:
    run = Run(CHECKOUT_V2)
    run.succeed_until("AuthorizePayment", PROMO)
    run.deadline()
    assert run.now.failure is not None and run.now.failure.reason == "PAYMENT_TIMEOUT"
    for compensation in ("VoidPayment", "CancelOrder", "ReleaseStock", "ReleasePromo"):
        assert run.in_flight() == compensation
        decision = run.ok(compensation)
    assert decision.effects == (ClearDeadline(), PublishOutcome(False))


def test_v2_a_commit_failure_after_a_promo_undoes_everything_before_the_pivot() -> None:
    run = Run(CHECKOUT_V2)
    run.succeed_until("CommitStock", PROMO)
    run.fail("CommitStock", Failure("OUT_OF_STOCK", "Hold expired.", ("S",)))
    assert run.now.to_compensate == (
        "authorize_payment", "create_order", "reserve_stock", "apply_promo"
    )


# ---- definitions -----------------------------------------------------------------


def test_checkout_definition_shape() -> None:
    assert [s.name for s in CHECKOUT_V1.steps] == [
        "reserve_stock", "create_order", "authorize_payment", "commit_stock",
        "capture_payment", "confirm_order",
    ]
    assert CHECKOUT_V1.pivot_index == 3
    assert all(s.compensation for s in CHECKOUT_V1.steps[:3])
    assert not any(s.compensation for s in CHECKOUT_V1.steps[3:])
    assert CHECKOUT_V1.step_for_action("VoidPayment") is None
    assert CHECKOUT_V1.step_for_compensation("VoidPayment") == CHECKOUT_V1.steps[2]
    with pytest.raises(KeyError):
        CHECKOUT_V1.index_of("nope")
    assert SagaDefinition("x", 1, (Step("a", "s", "A"),)).pivot_index == 1
    assert CHECKOUT_V2.steps[1:] == CHECKOUT_V1.steps and CHECKOUT_V2.pivot_index == 4


def test_optional_steps_run_only_when_their_context_key_is_set() -> None:
    definition = SagaDefinition("t", 9, (
        Step("a", "svc", "A", "UndoA"),
        Step("promo", "svc", "UsePromo", "GiveBackPromo", only_if="promo_code"),
        Step("b", "svc", "B"),
    ))
    without = Run(definition)
    without.start({"promo_code": None})
    assert [s.command for s in sends(without.ok("A"))] == ["B"]
    without.fail("B")
    assert without.now.to_compensate == ("a",)

    with_promo = Run(definition)
    with_promo.start({"promo_code": "BF10"})
    assert [s.command for s in sends(with_promo.ok("A"))] == ["UsePromo"]
    with_promo.ok("UsePromo")
    with_promo.fail("B")
    assert with_promo.now.to_compensate == ("promo", "a")


def test_a_definition_whose_every_step_is_skipped_succeeds_at_once() -> None:
    definition = SagaDefinition("t", 9, (Step("a", "svc", "A", only_if="never"),))
    decision = Run(definition).start({})
    assert decision.state.status is SagaStatus.SUCCEEDED
    assert decision.effects == (ClearDeadline(), PublishOutcome(True))


# ---- persistence ---------------------------------------------------------------


def test_state_json_round_trip_keeps_every_field() -> None:
    state = SagaState(
        session_id=SESSION, definition_version=1, status=SagaStatus.COMPENSATING, cursor=1,
        attempt=3, completed=("reserve_stock", "create_order"),
        to_compensate=("create_order", "reserve_stock"),
        failure=Failure("OUT_OF_STOCK", "Short.", ("A", "B")),
        context={"nested": {"list": [1, 2]}, "n": None}, stuck=True,
    )
    assert roundtrip(state) == state
    assert roundtrip(replace(state, failure=None, stuck=False)) == replace(
        state, failure=None, stuck=False
    )
    # Rows written before a field existed still load.
    minimal = {"session_id": SESSION, "definition_version": 1, "status": "RUNNING",
               "cursor": 0, "attempt": 1}
    assert from_json(minimal) == SagaState(SESSION, 1, SagaStatus.RUNNING, 0, 1)


# ---- property: random interleavings ----------------------------------------------

# Small budgets, so "stuck" and giving up on an action are reachable.
PROPERTY_CONFIG = MachineConfig(max_compensation_attempts=3, max_action_attempts=3)
SCENARIOS = [
    (CHECKOUT_V1, CONTEXT),
    (CHECKOUT_V2, {**CONTEXT, "promo_code": "BF10"}),
    (CHECKOUT_V2, {**CONTEXT, "promo_code": None}),
]


def check_decision(
    run: Run, prev: SagaState, event: SagaEvent, decision: Decision, started: set[str]
) -> None:
    definition, new = run.definition, decision.state
    for send in sends(decision):
        step = definition.steps[definition.index_of(send.step)]
        if send.compensation:
            assert send.step in started, f"compensating {send.step}, which never started"
            assert send.command == step.compensation
        else:
            assert new.status is SagaStatus.RUNNING
            assert send.step == definition.steps[new.cursor].name
            assert send.command == step.action
            started.add(send.step)
    if prev.status.terminal:
        assert new == prev, "a finished saga never changes"
    runnable = [s.name for s in run.runnable()]
    assert list(new.completed) == runnable[: len(new.completed)], "steps complete in order"
    pivot = definition.steps[definition.pivot_index].name
    if pivot in new.completed:
        assert new.status in (SagaStatus.RUNNING, SagaStatus.SUCCEEDED), "past the pivot: forward only"
    if new.status is SagaStatus.SUCCEEDED:
        assert list(new.completed) == runnable
    outcomes = [e for e in decision.effects if isinstance(e, PublishOutcome)]
    if outcomes:
        assert not prev.status.terminal and new.status.terminal
        assert outcomes == [PublishOutcome(new.status is SagaStatus.SUCCEEDED)]
    elif new.status.terminal:
        assert prev.status.terminal, "ending without publishing an outcome"


def expected_undo(definition: SagaDefinition, prev: SagaState, event: SagaEvent) -> list[str]:
    compensable = {s.name for s in definition.steps if s.compensation}
    undo = [name for name in reversed(prev.completed) if name in compensable]
    in_flight = definition.steps[prev.cursor].name
    if isinstance(event, DeadlinePassed) and in_flight in compensable:
        undo.insert(0, in_flight)  # a timed-out step may have happened: undo it first
    return undo


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_replies_and_deadlines_keep_the_saga_sound(data: st.DataObject) -> None:
    definition, context = data.draw(st.sampled_from(SCENARIOS), label="scenario")
    run = Run(definition, PROPERTY_CONFIG)
    first = run.start(context)
    started = {s.step for s in sends(first)}
    commands = [s.command for s in sends(first)]  # services answer only what was sent
    tokens = [run.now.deadline_token]  # every deadline ever scheduled
    armed: str | None = tokens[0]  # the deadline the timer holds now
    undo: list[str] | None = None
    compensations: list[str] = []  # compensation steps sent in order, late voids aside

    def step(event: SagaEvent) -> None:
        nonlocal armed, undo
        prev = run.now
        decision = run.feed(event)
        check_decision(run, prev, event, decision, started)
        if prev.status is SagaStatus.RUNNING and decision.state.status in (
            SagaStatus.COMPENSATING, SagaStatus.FAILED
        ):
            undo = expected_undo(definition, prev, event)
        late = isinstance(event, Replied) and decision.state == prev
        for send in sends(decision):
            commands.append(send.command)
            if send.compensation and not late and (not compensations or compensations[-1] != send.step):
                compensations.append(send.step)
        # Compensations go out in the reverse of the completion order.
        assert undo is not None or compensations == []
        assert undo is None or compensations == undo[: len(compensations)]
        if isinstance(event, DeadlinePassed) and event.token == armed:
            armed = None  # the timer clears what it fired
        for effect in decision.effects:
            if isinstance(effect, ScheduleDeadline):
                armed = effect.token
                tokens.append(effect.token)
            elif isinstance(effect, ClearDeadline):
                armed = None

    moves = data.draw(st.integers(0, 40), label="moves")
    for _ in range(moves):
        kind = data.draw(st.sampled_from(["reply", "reply", "reply", "deadline", "stale"]))
        if kind == "reply":
            command = data.draw(st.sampled_from(commands))
            ok = data.draw(st.booleans())
            step(Replied(command, ok, failure=None if ok else Failure("OUT_OF_STOCK", "no")))
        elif kind == "deadline" and armed is not None:
            step(DeadlinePassed(armed))
        elif kind == "stale":
            step(DeadlinePassed(data.draw(st.sampled_from(tokens))))

    # Now every command in flight is eventually answered (compensations with
    # success, actions either way while a failure may still compensate).
    for _ in range(100):
        if run.now.status.terminal:
            break
        in_flight = run.in_flight()
        ok = True
        if run.now.status is SagaStatus.RUNNING and run.now.cursor <= definition.pivot_index:
            ok = data.draw(st.booleans(), label="drain-ok")
        step(Replied(in_flight, ok, failure=None if ok else Failure("OUT_OF_STOCK", "no")))
    assert run.now.status.terminal
    assert not run.now.stuck
    if run.now.status is SagaStatus.FAILED:
        assert undo is not None and compensations == undo
    else:
        assert undo is None and compensations == []
