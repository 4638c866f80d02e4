"""The pure saga state machine: ``decide(definition, config, state, event)``.

It walks a ``SagaDefinition`` forward step by step; on a business failure or
a fatal timeout it undoes the completed steps in reverse order; after the
pivot it only goes forward, retrying. It has no I/O: the coordinator persists
the returned state and carries out the returned effects.

Rules that keep the contract's guarantees:
- a reply is acted on only when it answers the command in flight; anything
  else is a duplicate or a late reply and changes nothing, except that
- a late *success* of a step that is being or has been undone (a payment
  authorized after its timeout) is undone again by its compensation;
- compensations are retried with backoff until they succeed, and a
  compensation that keeps failing is dead-lettered and the saga marked stuck,
  never silently dropped; if that compensation succeeds after all (a late
  answer or a redrive), the saga resumes and still ends;
- an action is re-sent at most ``max_action_attempts`` times (a command its
  service dead-letters is otherwise re-sent forever): before the pivot the
  saga then gives up and undoes what it did, failing with the step's timeout
  reason or INVALID_REQUEST (the request could not be processed); at or after
  the pivot, where nothing may be undone, the commands are dead-lettered and
  the saga marked stuck until an answer (late, or after a redrive) or an
  operator moves it on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from saga.definition import OnTimeout, SagaDefinition, Step
from saga.state import (
    ClearDeadline,
    DeadLetter,
    DeadlinePassed,
    Decision,
    Effect,
    Failure,
    LogEntry,
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
)


@dataclass(frozen=True)
class MachineConfig:
    timeouts: Mapping[str, float] = field(
        default_factory=lambda: {"step": 20.0, "payment": 30.0}
    )
    max_compensation_attempts: int = 8
    # Sends of one action (the first and its re-sends) before the saga gives up.
    max_action_attempts: int = 8
    retry_backoff_cap: float = 60.0
    # Delay before a compensation that answered "failed" is tried again.
    compensation_retry_delay: float = 0.5


def decide(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState | None,
    event: SagaEvent,
) -> Decision:
    if isinstance(event, Started):
        if state is not None:
            return Decision(state, log=(LogEntry("-", "ignored", "checkout already started"),))
        return _start(definition, config, event)
    if state is None:
        raise ValueError(f"{type(event).__name__} for a saga that was never started")
    if isinstance(event, Replied):
        return _on_reply(definition, config, state, event)
    if isinstance(event, OperatorAction):
        return _on_operator(definition, config, state, event)
    return _on_deadline(definition, config, state, event)


# ---- forward ---------------------------------------------------------------


def _start(definition: SagaDefinition, config: MachineConfig, event: Started) -> Decision:
    state = SagaState(
        session_id=event.session_id,
        definition_version=definition.version,
        status=SagaStatus.RUNNING,
        cursor=-1,
        attempt=0,
        context=dict(event.context),
    )
    started = LogEntry("-", "started", f"checkout saga v{definition.version} started")
    return _advance(definition, config, state, after=-1, log=(started,))


def _runs(step: Step, state: SagaState) -> bool:
    return step.only_if is None or bool(state.context.get(step.only_if))


def _next_runnable(definition: SagaDefinition, state: SagaState, after: int) -> int | None:
    for i in range(after + 1, len(definition.steps)):
        if _runs(definition.steps[i], state):
            return i
    return None


def _in_flight(definition: SagaDefinition, state: SagaState) -> list[Step]:
    """The steps of the running stage that have not answered yet, in order."""
    steps = (definition.steps[i] for i in definition.stage(state.cursor))
    return [s for s in steps if _runs(s, state) and s.name not in state.completed]


def _step_done(
    definition: SagaDefinition, config: MachineConfig, state: SagaState, log: tuple[LogEntry, ...]
) -> Decision:
    """A step of the running stage is done: move on once the whole stage is."""
    if _in_flight(definition, state):
        return Decision(state, (), log)
    last = definition.stage(state.cursor)[-1]
    return _advance(definition, config, state, after=last, log=log)


def _advance(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    after: int,
    log: tuple[LogEntry, ...] = (),
) -> Decision:
    # A stage done is a stuck saga moving again (its dead-lettered commands answered).
    state = replace(state, stuck=False)
    nxt = _next_runnable(definition, state, after)
    if nxt is None:
        done = replace(state, status=SagaStatus.SUCCEEDED, cursor=len(definition.steps), attempt=0)
        return Decision(
            done,
            (ClearDeadline(), PublishOutcome(succeeded=True)),
            log + (LogEntry("-", "succeeded", "checkout succeeded"),),
        )
    return _send_action(definition, config, replace(state, cursor=nxt, attempt=1), log)


def _send_action(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    log: tuple[LogEntry, ...] = (),
) -> Decision:
    stage = _in_flight(definition, state)
    sends = tuple(SendCommand(s.name, s.action, state.attempt, compensation=False) for s in stage)
    # One deadline for the stage: its first unanswered step's (only that one may
    # fail on timeout; definition.py checks).
    deadline = ScheduleDeadline(_action_timeout(config, stage[0], state.attempt), state.deadline_token)
    entries = tuple(LogEntry(s.name, "command", f"{s.action} sent (attempt {state.attempt})")
                    for s in stage)
    return Decision(state, (*sends, deadline), log + entries)


def _action_timeout(config: MachineConfig, step: Step, attempt: int) -> float:
    base = config.timeouts.get(step.timeout, config.timeouts["step"])
    if step.on_timeout is OnTimeout.FAIL:
        return base
    return _backoff(config, base, attempt)


def _backoff(config: MachineConfig, base: float, attempt: int) -> float:
    # The exponent is bounded: a forward-only step may be retried for days, and
    # base * 2**1100 no longer fits in a float (OverflowError).
    return min(base * 2.0 ** min(attempt - 1, 64), max(base, config.retry_backoff_cap))


def _on_reply(
    definition: SagaDefinition, config: MachineConfig, state: SagaState, event: Replied
) -> Decision:
    if state.status is SagaStatus.RUNNING:
        for step in _in_flight(definition, state):
            if event.command == step.action:
                return _on_action_reply(definition, config, state, step, event)
    if state.status is SagaStatus.COMPENSATING:
        step = definition.steps[definition.index_of(state.to_compensate[state.cursor])]
        if event.command == step.compensation:
            return _on_compensation_reply(definition, config, state, step, event)
    return _on_stray_reply(definition, state, event)


def _on_action_reply(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    step: Step,
    event: Replied,
) -> Decision:
    if event.ok:
        done = replace(state, completed=state.completed + (step.name,)).with_context(event.data)
        entry = LogEntry(step.name, "succeeded", f"{step.action} succeeded")
        return _step_done(definition, config, done, (entry,))
    failure = event.failure or Failure("INVALID_REQUEST", f"{step.action} failed")
    entry = LogEntry(step.name, "failed", f"{failure.reason}: {failure.detail}")
    if state.cursor > definition.pivot_index:
        # Past the pivot there is no going back; the step's deadline re-sends it.
        retry = LogEntry(step.name, "retry-scheduled", "forward-only step failed; will retry")
        return Decision(state, (), (entry, retry))
    # A step of its stage still in flight may have happened: undo it too.
    others = tuple(s.name for s in _in_flight(definition, state) if s is not step)
    return _compensate(definition, config, state, failure, also=others, log=(entry,))


def _on_stray_reply(definition: SagaDefinition, state: SagaState, event: Replied) -> Decision:
    step = definition.step_for_action(event.command)
    late_success = (
        event.ok
        and step is not None
        and step.compensation is not None
        and step.name not in state.completed
        and state.status in (SagaStatus.COMPENSATING, SagaStatus.FAILED)
    )
    if late_success and step is not None and step.compensation is not None:
        entry = LogEntry(
            step.name, "late-reply", f"{event.command} succeeded after the saga gave up; undoing it"
        )
        return Decision(state, (SendCommand(step.name, step.compensation, 1, True),), (entry,))
    entry = LogEntry(
        step.name if step else "-", "ignored", f"duplicate or late {event.command} reply ignored"
    )
    return Decision(state, (), (entry,))


# ---- timeouts --------------------------------------------------------------


def _on_deadline(
    definition: SagaDefinition, config: MachineConfig, state: SagaState, event: DeadlinePassed
) -> Decision:
    if event.token != state.deadline_token or state.status.terminal or state.stuck:
        return Decision(state)
    if state.status is SagaStatus.COMPENSATING:
        return _retry_compensation(definition, config, state)
    waiting = _in_flight(definition, state)
    step = waiting[0]
    if step.on_timeout is OnTimeout.FAIL and state.cursor < definition.pivot_index:
        seconds = config.timeouts.get(step.timeout, config.timeouts["step"])
        failure = Failure(
            step.timeout_reason or "INVALID_REQUEST",
            f"{step.action} got no answer within {seconds:g} seconds.",
        )
        entry = LogEntry(step.name, "timeout", failure.detail)
        # The timed-out steps may still have happened: undo them too.
        also = tuple(s.name for s in waiting)
        return _compensate(definition, config, state, failure, also=also, log=(entry,))
    if state.attempt >= config.max_action_attempts:
        return _give_up(definition, config, state, waiting)
    entries = tuple(LogEntry(s.name, "timeout", f"no answer to {s.action}; re-sending")
                    for s in waiting)
    return _send_action(definition, config, replace(state, attempt=state.attempt + 1), entries)


def _give_up(
    definition: SagaDefinition, config: MachineConfig, state: SagaState, waiting: list[Step]
) -> Decision:
    """The stage's commands were sent ``attempt`` times and never answered: a
    service that dead-letters them would be sent them forever."""
    actions = ", ".join(s.action for s in waiting)
    said = f"no answer to {actions} after {state.attempt} attempts"
    if state.cursor < definition.pivot_index:
        # The reason a step that fails on its deadline uses, else INVALID_REQUEST:
        # the checkout could not be processed as sent (a service cannot handle it).
        failure = Failure(
            waiting[0].timeout_reason or "INVALID_REQUEST",
            f"{actions} got no answer after {state.attempt} attempts; "
            "the checkout could not be processed.",
        )
        entry = LogEntry(waiting[0].name, "gave-up", said + "; undoing the checkout")
        # They may still happen (a redrive): undo them too; a late success is undone again.
        also = tuple(s.name for s in waiting)
        return _compensate(definition, config, state, failure, also=also, log=(entry,))
    # Past the pivot nothing may be undone: the commands go to the dead letters
    # for an operator (redrive, or `saga retry`) and the saga waits, stuck.
    effects: tuple[Effect, ...] = (
        ClearDeadline(), *(DeadLetter(s.name, s.action, said, stage="action") for s in waiting))
    entries = tuple(LogEntry(s.name, "gave-up", said + "; sent to the dead-letter topic, saga stuck")
                    for s in waiting)
    return Decision(replace(state, stuck=True), effects, entries)


# ---- compensation ----------------------------------------------------------


def _compensate(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    failure: Failure,
    also: tuple[str, ...] = (),
    log: tuple[LogEntry, ...] = (),
) -> Decision:
    # First the steps in flight that may have happened (``also``: the one that
    # timed out first, so a late authorization is voided first), then the
    # completed ones in reverse definition order (for steps of different
    # stages, the reverse of completion; one stage's steps have no order).
    names = also + tuple(sorted(state.completed, key=definition.index_of, reverse=True))
    undo = tuple(name for name in names if definition.steps[definition.index_of(name)].compensation)
    state = replace(state, failure=failure, to_compensate=undo)
    if not undo:
        return _fail(state, log)
    state = replace(state, status=SagaStatus.COMPENSATING, cursor=0, attempt=1)
    entry = LogEntry("-", "compensating", f"undoing {', '.join(undo)}")
    return _send_compensation(definition, config, state, log + (entry,))


def _send_compensation(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    log: tuple[LogEntry, ...],
) -> Decision:
    step = definition.steps[definition.index_of(state.to_compensate[state.cursor])]
    assert step.compensation is not None
    base = config.timeouts["step"]
    effects: tuple[Effect, ...] = (
        SendCommand(step.name, step.compensation, state.attempt, compensation=True),
        ScheduleDeadline(_backoff(config, base, state.attempt), state.deadline_token),
    )
    entry = LogEntry(step.name, "command", f"{step.compensation} sent (attempt {state.attempt})")
    return Decision(state, effects, log + (entry,))


def _on_compensation_reply(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    step: Step,
    event: Replied,
) -> Decision:
    if not event.ok:
        detail = event.failure.detail if event.failure else "no detail"
        entry = LogEntry(step.name, "failed", f"{step.compensation} failed: {detail}")
        if state.stuck:
            # Dead-lettered already: the next try is an operator's redrive, not a timer.
            return Decision(state, (), (entry,))
        return Decision(
            state,
            (ScheduleDeadline(config.compensation_retry_delay, state.deadline_token),),
            (entry,),
        )
    entry = LogEntry(step.name, "compensated", f"{step.compensation} succeeded")
    # A stuck saga resumes when its dead-lettered compensation succeeds at last
    # (a reply after the final deadline, or a redrive): it must still end.
    state = replace(state, stuck=False)
    if state.cursor + 1 >= len(state.to_compensate):
        return _fail(replace(state, cursor=state.cursor + 1, attempt=0), (entry,))
    nxt = replace(state, cursor=state.cursor + 1, attempt=1)
    return _send_compensation(definition, config, nxt, (entry,))


def _retry_compensation(
    definition: SagaDefinition, config: MachineConfig, state: SagaState
) -> Decision:
    step = definition.steps[definition.index_of(state.to_compensate[state.cursor])]
    assert step.compensation is not None
    if state.attempt >= config.max_compensation_attempts:
        detail = f"{step.compensation} did not succeed after {state.attempt} attempts"
        stuck = replace(state, stuck=True)
        return Decision(
            stuck,
            (ClearDeadline(), DeadLetter(step.name, step.compensation, detail)),
            (LogEntry(step.name, "dead-letter", detail + "; sent to the dead-letter topic"),),
        )
    entry = LogEntry(step.name, "timeout", f"retrying {step.compensation}")
    return _send_compensation(
        definition, config, replace(state, attempt=state.attempt + 1), (entry,)
    )


def _fail(state: SagaState, log: tuple[LogEntry, ...]) -> Decision:
    failed = replace(state, status=SagaStatus.FAILED)
    reason = state.failure.reason if state.failure else "?"
    return Decision(
        failed,
        (ClearDeadline(), PublishOutcome(succeeded=False)),
        log + (LogEntry("-", "failed", f"checkout failed: {reason}"),),
    )


# ---- operator actions ------------------------------------------------------
# An operator unsticks a saga that cannot end by itself. Every action, done or
# refused, leaves an "admin" (or "admin-rejected") entry in the saga's log.


def _on_operator(
    definition: SagaDefinition, config: MachineConfig, state: SagaState, event: OperatorAction
) -> Decision:
    step = _step_in_flight(definition, state)
    said = f"{event.kind.value} by {event.operator}: {event.reason or 'no reason given'}"
    entry = LogEntry(step.name if step else "-", "admin", said)
    if state.status.terminal or step is None:
        return _refuse(state, entry, f"the saga has already ended ({state.status.value})")
    return _OPERATOR_ACTIONS[event.kind](definition, config, state, event, entry)


def _step_in_flight(definition: SagaDefinition, state: SagaState) -> Step | None:
    if state.status is SagaStatus.RUNNING and 0 <= state.cursor < len(definition.steps):
        waiting = _in_flight(definition, state)
        return waiting[0] if waiting else definition.steps[state.cursor]
    if state.status is SagaStatus.COMPENSATING and 0 <= state.cursor < len(state.to_compensate):
        return definition.steps[definition.index_of(state.to_compensate[state.cursor])]
    return None


def _refuse(state: SagaState, entry: LogEntry, why: str) -> Decision:
    refused = LogEntry(entry.step, "admin-rejected", f"{entry.detail}; refused: {why}")
    return Decision(state, (), (refused,), rejected=why)


def _operator_retry(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    event: OperatorAction,
    entry: LogEntry,
) -> Decision:
    state = replace(state, stuck=False)
    if state.status is SagaStatus.RUNNING:
        return _send_action(definition, config, replace(state, attempt=state.attempt + 1), (entry,))
    # A fresh budget of attempts: the operator fixed what made them fail.
    return _send_compensation(definition, config, replace(state, attempt=1), (entry,))


def _operator_compensate(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    event: OperatorAction,
    entry: LogEntry,
) -> Decision:
    if state.status is SagaStatus.COMPENSATING:
        note = LogEntry(entry.step, "admin", "already compensating: the compensation is retried")
        retried = _operator_retry(definition, config, state, event, entry)
        return replace(retried, log=(note,) + retried.log)
    if state.cursor >= definition.pivot_index:
        pivot = definition.steps[definition.pivot_index].name
        return _refuse(
            state, entry, f"the pivot ({pivot}) was reached: the saga only goes forward; "
            "retry or skip-step it instead",
        )
    failure = Failure("CANCELLED", f"The checkout was cancelled by an operator: {event.reason}")
    # The steps in flight may have happened: undo them too, as a timeout does.
    also = tuple(s.name for s in _in_flight(definition, state))
    return _compensate(
        definition, config, replace(state, stuck=False), failure, also=also, log=(entry,)
    )


def _operator_skip(
    definition: SagaDefinition,
    config: MachineConfig,
    state: SagaState,
    event: OperatorAction,
    entry: LogEntry,
) -> Decision:
    if not event.reason.strip():
        return _refuse(state, entry, "skipping a step needs a reason")
    state = replace(state, stuck=False)
    if state.status is SagaStatus.RUNNING:
        step = _in_flight(definition, state)[0]
        skipped = LogEntry(step.name, "skipped", f"{step.action} treated as done: {event.reason}")
        done = replace(state, completed=state.completed + (step.name,)).with_context(event.data)
        return _step_done(definition, config, done, (entry, skipped))
    step = definition.steps[definition.index_of(state.to_compensate[state.cursor])]
    skipped = LogEntry(step.name, "skipped", f"{step.compensation} treated as done: {event.reason}")
    if state.cursor + 1 >= len(state.to_compensate):
        return _fail(replace(state, cursor=state.cursor + 1, attempt=0), (entry, skipped))
    nxt = replace(state, cursor=state.cursor + 1, attempt=1)
    return _send_compensation(definition, config, nxt, (entry, skipped))


_OperatorHandler = Callable[
    [SagaDefinition, MachineConfig, SagaState, OperatorAction, LogEntry], Decision
]
_OPERATOR_ACTIONS: dict[OperatorKind, _OperatorHandler] = {
    OperatorKind.RETRY: _operator_retry,
    OperatorKind.COMPENSATE: _operator_compensate,
    OperatorKind.SKIP_STEP: _operator_skip,
}
