"""The saga's metrics, on the workers' registry (``messaging.metrics.REGISTRY``), and
what one coordinator decision did, counted and timed. Here, beside the saga, the
platform metrics need not know the saga's decisions, and tracing and metrics do not
import each other."""

from __future__ import annotations

import time
from collections import OrderedDict

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from messaging import metrics, tracing
from saga import repository
from saga.state import Decision, SendCommand

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

SAGAS_STARTED = Counter("checkout_sagas_started", "Checkout sagas started.", registry=metrics.REGISTRY)
SAGAS_SUCCEEDED = Counter("checkout_sagas_succeeded", "Checkout sagas that succeeded.",
                          registry=metrics.REGISTRY)
SAGAS_FAILED = Counter("checkout_sagas_failed", "Checkout sagas that failed, by reason.",
                       ["reason"], registry=metrics.REGISTRY)
COMPENSATIONS = Counter("checkout_saga_compensations",
                        "Compensations that succeeded (a step undone), by step.", ["step"],
                        registry=metrics.REGISTRY)
COMPENSATIONS_DEAD = Counter("checkout_saga_compensations_dead_lettered",
                             "Compensations given up and dead-lettered (saga stuck), by step.",
                             ["step"], registry=metrics.REGISTRY)
STEP_TIMEOUTS = Counter("checkout_saga_step_timeouts",
                        "Step deadlines that passed (re-sent or failed), by step.", ["step"],
                        registry=metrics.REGISTRY)
STEP_SECONDS = Histogram("checkout_saga_step_duration_seconds",
                         "From a step's command to its answer, by step and outcome "
                         "(succeeded, failed, compensated).", ["step", "outcome"],
                         buckets=_STEP_BUCKETS, registry=metrics.REGISTRY)
SAGAS_IN_FLIGHT = Gauge("checkout_sagas_in_flight",
                        "Sagas not finished, by status (RUNNING, COMPENSATING, STUCK); "
                        "sampled by the timers role.", ["status"], registry=metrics.REGISTRY)
DEADLINES_PARKED = Counter("checkout_saga_deadlines_parked",
                           "Sagas whose deadline could not be handled (a bug, a corrupt row): "
                           "marked stuck, deadline cleared, for an operator.", registry=metrics.REGISTRY)


async def sample_in_flight(pool: asyncpg.Pool) -> None:
    """The in-flight gauge, from ``saga.instances`` (sampled by the timers role)."""
    found = await repository.in_flight(pool)
    for status in ("RUNNING", "COMPENSATING", "STUCK"):
        SAGAS_IN_FLIGHT.labels(status).set(found.get(status, 0))


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
                SAGAS_STARTED.inc()
            elif e.kind == "succeeded":
                SAGAS_SUCCEEDED.inc()
            elif e.kind == "failed":
                SAGAS_FAILED.labels(state.failure.reason if state.failure else "UNKNOWN").inc()
            continue
        if e.kind == "compensated":
            COMPENSATIONS.labels(e.step).inc()
        elif e.kind == "timeout":
            STEP_TIMEOUTS.labels(e.step).inc()
        elif e.kind == "dead-letter":
            COMPENSATIONS_DEAD.labels(e.step).inc()
        outcome = _ANSWERS.get(e.kind)
        if outcome is None:
            continue
        seconds = STEP_CLOCK.answered(session, e.step)
        if seconds is not None:
            STEP_SECONDS.labels(e.step, outcome).observe(seconds)
            tracing.record_step(e.step, outcome, session, seconds, saga_traceparent)
    for effect in decision.effects:
        if isinstance(effect, SendCommand):
            STEP_CLOCK.sent(session, effect.step)
