"""The checkout saga as data: an ordered list of steps.

Each step names the command that performs it, the command that undoes it
(if any), what happens when its deadline passes, and whether it is the pivot
after which the saga only goes forward. The state machine in
``saga.machine`` walks any such definition; it knows no step by name.

Every saga instance records the definition version it started with, so a
deploy that changes the steps never changes a saga already in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class OnTimeout(StrEnum):
    RETRY = "retry"  # re-send the (idempotent) command, backing off
    FAIL = "fail"  # give up and compensate, with the step's timeout reason


@dataclass(frozen=True)
class Step:
    name: str
    service: str
    action: str
    compensation: str | None = None
    pivot: bool = False
    # Which timeout from MachineConfig.timeouts applies ("step" by default).
    timeout: str = "step"
    on_timeout: OnTimeout = OnTimeout.RETRY
    timeout_reason: str | None = None
    # Context key that must be truthy for the step to run (None: always).
    only_if: str | None = None
    # Sent together with the step before it: the steps of such a stage run at
    # once and the saga moves on when all of them have answered. A stage's
    # steps must not need each other's replies. The stage's deadline is its
    # first unanswered step's: an alongside step is retried, never failed, on
    # timeout, so only the first step of a stage may fail on its deadline.
    alongside: bool = False


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    version: int
    steps: tuple[Step, ...]

    def index_of(self, step_name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == step_name:
                return i
        raise KeyError(step_name)

    def step_for_action(self, command: str) -> Step | None:
        return next((s for s in self.steps if s.action == command), None)

    def step_for_compensation(self, command: str) -> Step | None:
        return next((s for s in self.steps if s.compensation == command), None)

    @property
    def pivot_index(self) -> int:
        """Index of the pivot step; len(steps) when there is none."""
        return next((i for i, s in enumerate(self.steps) if s.pivot), len(self.steps))

    def stage(self, start: int) -> range:
        """The indices of the stage that starts at ``start``: it and the steps
        right after it that run alongside."""
        end = start + 1
        while end < len(self.steps) and self.steps[end].alongside:
            end += 1
        return range(start, end)

    def __post_init__(self) -> None:
        for i, step in enumerate(self.steps):
            if not step.alongside:
                continue
            first = self.steps[i - 1] if i else None
            if first is None or step.pivot or first.pivot:
                raise ValueError(f"{step.name}: the pivot and the first step run alone")
            if step.on_timeout is not OnTimeout.RETRY:
                raise ValueError(f"{step.name}: only the first step of a stage may fail on its deadline")


CHECKOUT_V1 = SagaDefinition(
    name="checkout",
    version=1,
    steps=(
        Step("reserve_stock", "inventory", "ReserveStock", "ReleaseStock"),
        Step("create_order", "orders", "CreateOrder", "CancelOrder"),
        Step(
            "authorize_payment",
            "payment",
            "AuthorizePayment",
            "VoidPayment",
            timeout="payment",
            on_timeout=OnTimeout.FAIL,
            timeout_reason="PAYMENT_TIMEOUT",
        ),
        # Turning the hold into a sale is the pivot: once stock is sold and
        # money authorized, the saga only goes forward.
        Step("commit_stock", "inventory", "CommitStock", pivot=True),
        Step("capture_payment", "payment", "CapturePayment"),
        Step("confirm_order", "orders", "ConfirmOrder"),
    ),
)

# Version 2 takes the promo code's use first: a code that is invalid or used up
# fails the checkout before any stock is held or money authorized, and the
# discounted total is known to create_order and authorize_payment. Sagas that
# started on version 1 finish on version 1.
CHECKOUT_V2 = SagaDefinition(
    name="checkout",
    version=2,
    steps=(
        Step("apply_promo", "promotions", "ApplyPromo", "ReleasePromo", only_if="promo_code"),
        *CHECKOUT_V1.steps,
    ),
)


def alongside(definition: SagaDefinition, version: int, *names: str,
              order: tuple[str, ...] = ()) -> SagaDefinition:
    """``definition`` as a new version in which ``names`` run alongside the
    step before them (the steps in ``order``, when given)."""
    by_name = {s.name: s for s in definition.steps}
    steps = [by_name[n] for n in order] if order else list(definition.steps)
    return SagaDefinition(definition.name, version,
                          tuple(replace(s, alongside=s.name in names) for s in steps))


# Version 3 is version 2 in five stages instead of seven steps, so a checkout
# makes four Kafka hops fewer: the order is created while the payment is
# authorized (neither needs the other's answer; a decline or a payment timeout
# cancels the order, as before), and after the pivot the capture and the
# confirmation go out together (both only go forward). The order is still
# created only once the stock is held: creating it alongside the reservation
# would leave a cancelled order behind every cart that cannot be held, the
# commonest failure at peak.
CHECKOUT_V3 = alongside(
    CHECKOUT_V2, 3, "create_order", "confirm_order",
    order=("apply_promo", "reserve_stock", "authorize_payment", "create_order", "commit_stock",
           "capture_payment", "confirm_order"),
)

DEFINITIONS: dict[int, SagaDefinition] = {
    d.version: d for d in (CHECKOUT_V1, CHECKOUT_V2, CHECKOUT_V3)
}
CURRENT = CHECKOUT_V3
