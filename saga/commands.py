"""Build each command the saga sends from the saga's state (dispatch by name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from saga.state import SagaState
from schemas.contract import LineItem, ShippingAddress
from schemas.internal import (
    ApplyPromo,
    AuthorizePayment,
    CancelOrder,
    CapturePayment,
    Command,
    CommitStock,
    ConfirmOrder,
    CreateOrder,
    ReleasePromo,
    ReleaseStock,
    ReserveStock,
    VoidPayment,
)

PAYMENT_FAILURES = frozenset({"PAYMENT_DECLINED", "PAYMENT_TIMEOUT"})


def _items(state: SagaState) -> list[LineItem]:
    return [LineItem.model_validate(i) for i in state.context["items"]]


def _common(state: SagaState, attempt: int) -> dict[str, Any]:
    return {"checkout_session_id": state.session_id, "attempt": attempt}


def _reserve(state: SagaState, attempt: int, hold_ttl: float) -> Command:
    return ReserveStock(**_common(state, attempt), items=_items(state), hold_ttl_seconds=hold_ttl)


def _create_order(state: SagaState, attempt: int, _ttl: float) -> Command:
    ctx = state.context
    address = ctx.get("shipping_address")
    return CreateOrder(
        **_common(state, attempt),
        order_id=ctx["order_id"],
        customer_id=ctx["customer_id"],
        items=_items(state),
        subtotal=ctx["subtotal"],
        discount=ctx["discount"],
        total=ctx["total"],
        currency=ctx["currency"],
        shipping_address=None if address is None else ShippingAddress.model_validate(address),
    )


def _cancel_order(state: SagaState, attempt: int, _ttl: float) -> Command:
    reason = state.failure.reason if state.failure else "CANCELLED"
    return CancelOrder(
        **_common(state, attempt), payment_failed=reason in PAYMENT_FAILURES, reason=reason
    )


def _authorize(state: SagaState, attempt: int, _ttl: float) -> Command:
    payment = state.context["payment"]
    return AuthorizePayment(
        **_common(state, attempt),
        amount=state.context["total"],
        currency=state.context["currency"],
        method=payment["method"],
        token=payment["token"],
    )


def _commit(state: SagaState, attempt: int, _ttl: float) -> Command:
    return CommitStock(**_common(state, attempt), items=_items(state))


def _apply_promo(state: SagaState, attempt: int, _ttl: float) -> Command:
    return ApplyPromo(
        **_common(state, attempt), promo_code=state.context["promo_code"], items=_items(state)
    )


def _release_promo(state: SagaState, attempt: int, _ttl: float) -> Command:
    return ReleasePromo(**_common(state, attempt), promo_code=state.context["promo_code"])


def _simple(cls: type[Command]) -> Callable[[SagaState, int, float], Command]:
    def build(state: SagaState, attempt: int, _ttl: float) -> Command:
        return cls(**_common(state, attempt))

    return build


BUILDERS: dict[str, Callable[[SagaState, int, float], Command]] = {
    "ReserveStock": _reserve,
    "ReleaseStock": _simple(ReleaseStock),
    "CommitStock": _commit,
    "CreateOrder": _create_order,
    "CancelOrder": _cancel_order,
    "ConfirmOrder": _simple(ConfirmOrder),
    "AuthorizePayment": _authorize,
    "VoidPayment": _simple(VoidPayment),
    "CapturePayment": _simple(CapturePayment),
    "ApplyPromo": _apply_promo,
    "ReleasePromo": _release_promo,
}


def build_command(name: str, state: SagaState, attempt: int, hold_ttl: float) -> Command:
    return BUILDERS[name](state, attempt, hold_ttl)
