"""The promo step's commands, built from the saga state, and the discount that
the ApplyPromo reply merges into the context reaching the later commands."""

from __future__ import annotations

from saga.commands import build_command
from saga.definition import CURRENT, DEFINITIONS
from saga.state import SagaState, SagaStatus
from schemas.internal import COMMANDS, ApplyPromo, AuthorizePayment, CreateOrder, ReleasePromo

CONTEXT = {
    "customer_id": "cust_42", "currency": "USD", "order_id": "ord_1",
    "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": 2249}],
    "promo_code": "bf10", "payment": {"method": "card", "token": "tok_visa"},
    "shipping_address": None, "subtotal": 4498, "discount": 0, "total": 4498,
}


def state(**extra: object) -> SagaState:
    return SagaState("cs_1", CURRENT.version, SagaStatus.RUNNING, 0, 1, context={**CONTEXT, **extra})


def test_current_definition_applies_the_promo_before_the_hold_and_keeps_v1() -> None:
    names = [s.name for s in CURRENT.steps]
    assert names.index("apply_promo") < names.index("reserve_stock")
    step = CURRENT.steps[names.index("apply_promo")]
    assert (step.service, step.action, step.compensation, step.only_if) == (
        "promotions", "ApplyPromo", "ReleasePromo", "promo_code")
    assert 1 in DEFINITIONS and DEFINITIONS[CURRENT.version] is CURRENT


def test_apply_and_release_carry_the_code_and_the_cart() -> None:
    apply = build_command("ApplyPromo", state(), 2, 900.0)
    assert isinstance(apply, ApplyPromo)
    assert (apply.promo_code, apply.attempt, [i.sku for i in apply.items]) == ("bf10", 2, ["SKU-1"])
    release = build_command("ReleasePromo", state(), 1, 900.0)
    assert isinstance(release, ReleasePromo) and release.promo_code == "bf10"
    assert COMMANDS["ApplyPromo"] is ApplyPromo and COMMANDS["ReleasePromo"] is ReleasePromo


def test_the_discounted_total_reaches_the_order_and_the_payment() -> None:
    discounted = state().with_context({"discount": 449, "total": 4049})  # the ApplyPromo reply
    order = build_command("CreateOrder", discounted, 1, 900.0)
    payment = build_command("AuthorizePayment", discounted, 1, 900.0)
    assert isinstance(order, CreateOrder) and isinstance(payment, AuthorizePayment)
    assert (order.subtotal, order.discount, order.total) == (4498, 449, 4049)
    assert payment.amount == 4049
