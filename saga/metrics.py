"""What one coordinator decision did, counted and timed: the saga's own use of
the platform metrics (their series stay in ``messaging.metrics``, so every
worker process exposes them). Here, beside the saga, the platform metrics need
not know the saga's decisions, and tracing and metrics do not import each other."""

from __future__ import annotations

import time
from collections import OrderedDict

from messaging import metrics, tracing
from saga.state import Decision, SendCommand

_ANSWERS = {"succeeded": "succeeded", "failed": "failed", "compensated": "compensated"}


class StepClock:
    """When this process last sent each saga step's command, so the answer
    can be timed without a database round trip. Only for metrics and spans:
    an answer handled by another process than the one that sent the command
    (a timer's re-send) is simply not timed. Bounded: the oldest are dropped."""

    def __init__(self, limit: int = 200_000) -> None:
        self._sent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._limit = limit

    def sent(self, session_id: str, step: str) -> None:
        key = (session_id, step)
        self._sent.pop(key, None)
        self._sent[key] = time.monotonic()
        while len(self._sent) > self._limit:
            self._sent.popitem(last=False)

    def answered(self, session_id: str, step: str) -> float | None:
        at = self._sent.pop((session_id, step), None)
        return None if at is None else time.monotonic() - at


STEP_CLOCK = StepClock()


def observe_decision(decision: Decision, saga_traceparent: str | None = None) -> None:
    """Count what one coordinator decision did, from its step-log entries, and
    time every step it answered (a histogram and a span per step). Called after
    the decision's write succeeded."""
    state = decision.state
    session = state.session_id
    for e in decision.log:
        if e.step == "-":
            if e.kind == "started":
                metrics.SAGAS_STARTED.inc()
            elif e.kind == "succeeded":
                metrics.SAGAS_SUCCEEDED.inc()
            elif e.kind == "failed":
                metrics.SAGAS_FAILED.labels(state.failure.reason if state.failure else "UNKNOWN").inc()
            continue
        if e.kind == "compensated":
            metrics.COMPENSATIONS.labels(e.step).inc()
        elif e.kind == "timeout":
            metrics.STEP_TIMEOUTS.labels(e.step).inc()
        elif e.kind == "dead-letter":
            metrics.COMPENSATIONS_DEAD.labels(e.step).inc()
        outcome = _ANSWERS.get(e.kind)
        if outcome is None:
            continue
        seconds = STEP_CLOCK.answered(session, e.step)
        if seconds is not None:
            metrics.STEP_SECONDS.labels(e.step, outcome).observe(seconds)
            tracing.record_step(e.step, outcome, session, seconds, saga_traceparent)
    for effect in decision.effects:
        if isinstance(effect, SendCommand):
            STEP_CLOCK.sent(session, effect.step)
