"""The order state machine, as a pure transition table.

    PENDING -> PAYMENT_AUTHORIZED -> CONFIRMED -> SHIPPED -> DELIVERED
    PENDING -> PAYMENT_FAILED -> CANCELLED
    PENDING | PAYMENT_AUTHORIZED | CONFIRMED -> CANCELLED   (checkout compensation)
    CONFIRMED -> CANCELLING -> CANCELLED                     (customer cancel before shipment)
    DELIVERED -> RETURN_INITIATED -> RETURNED

CANCELLING is the cancel saga's pivot: from the moment a cancel is accepted the
order can no longer ship, while the payment is voided or refunded and the stock
put back; it becomes CANCELLED when both are done (``services/orders/settlement``).

The repository applies a move with ``UPDATE ... WHERE status = expected``;
this module only says which moves exist.
"""

from __future__ import annotations

from enum import StrEnum

from messaging.errors import CheckoutSagaError


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    PAYMENT_AUTHORIZED = "PAYMENT_AUTHORIZED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    CONFIRMED = "CONFIRMED"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    RETURN_INITIATED = "RETURN_INITIATED"
    RETURNED = "RETURNED"


S = OrderStatus
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.PAYMENT_AUTHORIZED, S.PAYMENT_FAILED, S.CANCELLED}),
    S.PAYMENT_AUTHORIZED: frozenset({S.CONFIRMED, S.CANCELLED}),
    S.PAYMENT_FAILED: frozenset({S.CANCELLED}),
    S.CONFIRMED: frozenset({S.SHIPPED, S.CANCELLING, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.SHIPPED: frozenset({S.DELIVERED}),
    S.DELIVERED: frozenset({S.RETURN_INITIATED}),
    S.RETURN_INITIATED: frozenset({S.RETURNED}),
    S.CANCELLED: frozenset(),
    S.RETURNED: frozenset(),
}


class IllegalTransition(CheckoutSagaError, ValueError):
    def __init__(self, current: OrderStatus, target: OrderStatus) -> None:
        super().__init__(f"an order in {current} cannot move to {target}")
        self.current = current
        self.target = target


def can_move(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def path_to(current: OrderStatus, target: OrderStatus) -> tuple[OrderStatus, ...]:
    """The shortest chain of legal moves from ``current`` to ``target``.

    Checkout moves an order PENDING -> PAYMENT_AUTHORIZED -> CONFIRMED (or
    PENDING -> PAYMENT_FAILED -> CANCELLED) in one transaction; the path keeps
    every intermediate state in the history.
    """
    if current == target:
        return ()
    frontier: list[tuple[OrderStatus, tuple[OrderStatus, ...]]] = [(current, ())]
    seen = {current}
    while frontier:
        nxt: list[tuple[OrderStatus, tuple[OrderStatus, ...]]] = []
        for status, path in frontier:
            for move in sorted(TRANSITIONS[status]):
                if move in seen:
                    continue
                if move == target:
                    return path + (move,)
                seen.add(move)
                nxt.append((move, path + (move,)))
        frontier = nxt
    raise IllegalTransition(current, target)


def is_terminal(status: OrderStatus) -> bool:
    return not TRANSITIONS[status]
