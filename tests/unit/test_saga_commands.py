"""What the saga puts on the wire: the commands built from its state
(saga/commands.py) and the contract events of a finished saga
(saga/outcomes.py). Everything is encoded to bytes and decoded back through
the same door a consumer uses (``parse_event``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from messaging.message import OutgoingMessage
from messaging.messages import event_message, stable_id
from saga.commands import BUILDERS, build_command
from saga.definition import CHECKOUT_V1, DEFINITIONS
from saga.machine import MachineConfig, decide
from saga.outcomes import (
    SOURCE,
    initial_context,
    order_confirmed,
    order_id_for,
    rejected,
    result_messages,
)
from saga.state import (
    DeadlinePassed,
    Decision,
    Failure,
    PublishOutcome,
    Replied,
    SagaEvent,
    SagaState,
    SagaStatus,
    Started,
    from_json,
    to_json,
)
from schemas.contract import (
    CHECKOUT_RESULTS,
    ORDERS_CONFIRMED,
    TOPIC_EVENT_TYPES,
    CheckoutFailed,
    CheckoutRequested,
    CheckoutSucceeded,
    FailureReason,
    LineItem,
    OrderConfirmed,
    ShippingAddress,
)
from schemas.envelope import CloudEvent, parse_event
from schemas.internal import (
    COMMANDS,
    ApplyPromo,
    AuthorizePayment,
    CancelOrder,
    Command,
    CommitStock,
    CreateOrder,
    ReleasePromo,
    ReserveStock,
)

SESSION = "cs_cmd_8f14e45f"
REQUEST: dict[str, Any] = {
    "checkout_session_id": SESSION,
    "customer_id": "cust_42",
    "currency": "USD",
    "items": [
        {"sku": "SKU-1", "quantity": 2, "unit_price": 1999},
        {"sku": "SKU-2", "quantity": 3, "unit_price": 500},
    ],
    "promo_code": "BF10",
    "payment": {"method": "card", "token": "tok_visa"},
    "shipping_address": {"name": "A. Buyer", "line1": "1 Main St", "city": "Springfield",
                         "postal_code": "12345", "country": "US"},
}
SUBTOTAL = 2 * 1999 + 3 * 500
FINISHED = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
CONFIRMED_AT = "2024-05-01T11:59:58.123456+00:00"


def request(**changes: Any) -> CheckoutRequested:
    data = {**REQUEST, **changes}
    return CheckoutRequested.model_validate({k: v for k, v in data.items() if v is not None})


def state(
    req: CheckoutRequested | None = None,
    status: SagaStatus = SagaStatus.RUNNING,
    failure: Failure | None = None,
    **extra: Any,
) -> SagaState:
    """A saga state as the coordinator reads it back: through JSON."""
    req = req or request()
    ctx = {**initial_context(req, "evt-1"), **extra}
    raw = SagaState(req.checkout_session_id, 1, status, 0, 1, failure=failure, context=ctx)
    return from_json(json.loads(json.dumps(to_json(raw))))


def decode(msg: OutgoingMessage, types: dict[str, Any]) -> tuple[CloudEvent, Any]:
    assert msg.key == SESSION, "every message of a checkout is keyed by its session id"
    event, data = parse_event(msg.value, types)
    assert event.subject == SESSION
    return event, data


def command_bytes(name: str, cmd: Command) -> OutgoingMessage:
    return event_message("saga.test.commands", name, SOURCE, cmd.checkout_session_id, cmd)


# ---- commands --------------------------------------------------------------------


def test_every_command_of_every_definition_has_a_builder_and_a_model() -> None:
    names = {
        name
        for definition in DEFINITIONS.values()
        for step in definition.steps
        for name in (step.action, step.compensation)
        if name is not None
    }
    assert names <= set(BUILDERS), f"no builder for {names - set(BUILDERS)}"
    assert set(BUILDERS) <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_command_survives_the_wire(name: str) -> None:
    saga = state(failure=Failure("PAYMENT_DECLINED", "Declined."), total=3000, discount=1000 + 498)
    cmd = build_command(name, saga, 3, 900.0)
    assert type(cmd) is COMMANDS[name]
    assert (cmd.checkout_session_id, cmd.attempt) == (SESSION, 3)
    event, data = decode(command_bytes(name, cmd), COMMANDS)
    assert event.type == name
    assert data == cmd


def test_reserve_stock_carries_the_cart_and_the_hold_ttl() -> None:
    cmd = build_command("ReserveStock", state(), 1, 42.5)
    assert isinstance(cmd, ReserveStock)
    assert cmd.items == request().items and cmd.hold_ttl_seconds == 42.5


def test_commit_stock_carries_the_cart_again() -> None:
    cmd = build_command("CommitStock", state(), 2, 900.0)
    assert isinstance(cmd, CommitStock) and cmd.items == request().items and cmd.attempt == 2


def test_create_order_carries_the_money_and_the_address() -> None:
    cmd = build_command("CreateOrder", state(), 1, 900.0)
    assert isinstance(cmd, CreateOrder)
    assert cmd.order_id == order_id_for(SESSION)
    assert (cmd.customer_id, cmd.currency) == ("cust_42", "USD")
    assert (cmd.subtotal, cmd.discount, cmd.total) == (SUBTOTAL, 0, SUBTOTAL)
    assert cmd.items == [LineItem(sku="SKU-1", quantity=2, unit_price=1999),
                         LineItem(sku="SKU-2", quantity=3, unit_price=500)]
    assert cmd.shipping_address == ShippingAddress.model_validate(REQUEST["shipping_address"])


def test_create_order_without_an_address() -> None:
    cmd = build_command("CreateOrder", state(request(shipping_address=None)), 1, 900.0)
    assert isinstance(cmd, CreateOrder) and cmd.shipping_address is None


def test_create_order_and_authorization_use_the_total_after_a_promo() -> None:
    # ApplyPromo's reply merges the discount into the context.
    saga = state(discount=549, total=SUBTOTAL - 549)
    order = build_command("CreateOrder", saga, 1, 900.0)
    auth = build_command("AuthorizePayment", saga, 1, 900.0)
    assert isinstance(order, CreateOrder) and isinstance(auth, AuthorizePayment)
    assert (order.subtotal, order.discount, order.total) == (SUBTOTAL, 549, SUBTOTAL - 549)
    assert (auth.amount, auth.currency, auth.method, auth.token) == (
        SUBTOTAL - 549, "USD", "card", "tok_visa"
    )


@pytest.mark.parametrize(
    ("failure", "reason", "payment_failed"),
    [
        (Failure("PAYMENT_DECLINED", "x"), "PAYMENT_DECLINED", True),
        (Failure("PAYMENT_TIMEOUT", "x"), "PAYMENT_TIMEOUT", True),
        (Failure("OUT_OF_STOCK", "x", ("SKU-1",)), "OUT_OF_STOCK", False),
        (Failure("PROMO_EXHAUSTED", "x"), "PROMO_EXHAUSTED", False),
        (Failure("CANCELLED", "x"), "CANCELLED", False),
        (None, "CANCELLED", False),
    ],
)
def test_cancel_order_says_whether_the_payment_failed(
    failure: Failure | None, reason: str, payment_failed: bool
) -> None:
    cmd = build_command("CancelOrder", state(None, SagaStatus.COMPENSATING, failure), 1, 900.0)
    assert isinstance(cmd, CancelOrder)
    assert (cmd.reason, cmd.payment_failed) == (reason, payment_failed)


@pytest.mark.parametrize("name", ["ReleaseStock", "VoidPayment", "CapturePayment", "ConfirmOrder"])
def test_session_keyed_commands_carry_nothing_else_the_service_must_trust(name: str) -> None:
    cmd = build_command(name, state(), 4, 900.0)
    assert set(cmd.model_dump(exclude_defaults=True)) == {"checkout_session_id", "attempt"}


def test_promo_commands_name_the_code() -> None:
    apply = build_command("ApplyPromo", state(), 1, 900.0)
    release = build_command("ReleasePromo", state(), 1, 900.0)
    assert isinstance(apply, ApplyPromo) and isinstance(release, ReleasePromo)
    assert apply.promo_code == release.promo_code == "BF10"
    assert apply.items == request().items


def test_an_unknown_command_name_is_a_bug() -> None:
    with pytest.raises(KeyError):
        build_command("ChargeTwice", state(), 1, 900.0)


# ---- the saga's context ------------------------------------------------------------


def test_order_ids_are_stable_per_session_and_distinct_across_sessions() -> None:
    first = order_id_for(SESSION)
    assert first == order_id_for(SESSION)
    assert re.fullmatch(r"ord_[0-9a-f]{24}", first)
    assert len({order_id_for(f"cs_{i}") for i in range(1000)}) == 1000


def test_initial_context_is_json_and_sums_the_cart() -> None:
    ctx = initial_context(request(), "evt-7")
    assert json.loads(json.dumps(ctx)) == ctx
    assert ctx["request_id"] == "evt-7"
    assert (ctx["customer_id"], ctx["currency"], ctx["promo_code"]) == ("cust_42", "USD", "BF10")
    assert ctx["items"] == REQUEST["items"]
    assert ctx["payment"] == {"method": "card", "token": "tok_visa"}
    # Optional address fields that were not given stay out, not null.
    assert ctx["shipping_address"] == REQUEST["shipping_address"]
    assert ctx["subtotal"] == SUBTOTAL
    assert ctx["total"] == ctx["subtotal"] - ctx["discount"]
    assert ctx["order_id"] == order_id_for(SESSION)


def test_initial_context_without_promo_or_address() -> None:
    ctx = initial_context(request(promo_code=None, shipping_address=None), "evt-8")
    assert ctx["promo_code"] is None and ctx["shipping_address"] is None
    assert (ctx["subtotal"], ctx["discount"], ctx["total"]) == (SUBTOTAL, 0, SUBTOTAL)


# ---- outcomes ----------------------------------------------------------------------


def succeeded(**extra: Any) -> SagaState:
    return state(None, SagaStatus.SUCCEEDED, None, **{"confirmed_at": CONFIRMED_AT, **extra})


def test_a_success_publishes_the_result_and_the_order_for_the_warehouse() -> None:
    saga = succeeded(discount=549, total=SUBTOTAL - 549)
    result, order = result_messages(saga, FINISHED, with_order=True)
    assert (result.topic, order.topic) == (CHECKOUT_RESULTS, ORDERS_CONFIRMED)

    event, data = decode(result, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert (event.type, event.source, event.time) == ("CheckoutSucceeded", SOURCE, FINISHED)
    assert event.id == stable_id(SESSION, "CheckoutSucceeded")
    assert data == CheckoutSucceeded(
        checkout_session_id=SESSION, order_id=order_id_for(SESSION), subtotal=SUBTOTAL,
        discount=549, total=SUBTOTAL - 549, currency="USD",
    )

    event, data = decode(order, TOPIC_EVENT_TYPES[ORDERS_CONFIRMED])
    confirmed = datetime.fromisoformat(CONFIRMED_AT)
    assert (event.type, event.time) == ("OrderConfirmed", confirmed)
    assert event.id == stable_id(SESSION, "OrderConfirmed")
    assert isinstance(data, OrderConfirmed)
    assert data.model_dump(mode="json", exclude_none=True) == {
        "order_id": order_id_for(SESSION), "checkout_session_id": SESSION,
        "customer_id": "cust_42", "items": REQUEST["items"], "subtotal": SUBTOTAL,
        "discount": 549, "total": SUBTOTAL - 549, "currency": "USD",
        "shipping_address": REQUEST["shipping_address"],
        "confirmed_at": "2024-05-01T11:59:58.123456Z",
    }


def test_a_republished_result_is_the_same_event() -> None:
    saga = succeeded()
    first = result_messages(saga, FINISHED, with_order=True)
    again = result_messages(saga, FINISHED, with_order=False)
    assert again == first[:1], "a repeat re-sends the result, byte for byte, without the order"
    # OrderConfirmed keeps its id (and bytes) whenever it is built.
    assert order_confirmed(saga) == first[1]
    later = result_messages(saga, FINISHED + timedelta(hours=1), with_order=True)
    assert [parse_event(m.value, TOPIC_EVENT_TYPES[m.topic])[0].id for m in later] == [
        parse_event(m.value, TOPIC_EVENT_TYPES[m.topic])[0].id for m in first
    ]


def test_an_order_without_an_address_is_confirmed_without_one() -> None:
    saga = state(request(shipping_address=None), SagaStatus.SUCCEEDED, confirmed_at=CONFIRMED_AT)
    event, data = decode(order_confirmed(saga), TOPIC_EVENT_TYPES[ORDERS_CONFIRMED])
    assert "shipping_address" not in event.data and data.shipping_address is None


def test_confirmed_at_in_another_offset_is_the_same_instant() -> None:
    saga = succeeded(confirmed_at="2024-05-01T13:59:58.123456+02:00")
    msg = order_confirmed(saga)
    event, data = decode(msg, TOPIC_EVENT_TYPES[ORDERS_CONFIRMED])
    assert event.time == data.confirmed_at == datetime.fromisoformat(CONFIRMED_AT)
    assert json.loads(msg.value)["time"] == "2024-05-01T11:59:58.123456Z"


@pytest.mark.parametrize("reason", list(FailureReason))
def test_a_failure_publishes_checkout_failed_with_its_reason(reason: FailureReason) -> None:
    failure = Failure(reason.value, f"Because {reason.value}.", ("SKU-2", "SKU-1"))
    [msg] = result_messages(state(None, SagaStatus.FAILED, failure), FINISHED, with_order=True)
    assert msg.topic == CHECKOUT_RESULTS
    event, data = decode(msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert (event.type, event.id, event.time) == (
        "CheckoutFailed", stable_id(SESSION, "CheckoutFailed"), FINISHED
    )
    assert data == CheckoutFailed(checkout_session_id=SESSION, reason=reason,
                                  detail=f"Because {reason.value}.", skus=["SKU-2", "SKU-1"])


def test_a_failure_naming_no_items_has_no_skus_field() -> None:
    failure = Failure("PAYMENT_DECLINED", "The card was declined.")
    [msg] = result_messages(state(None, SagaStatus.FAILED, failure), FINISHED, with_order=False)
    event, data = decode(msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert "skus" not in event.data and data.skus is None


def test_an_invalid_request_answer_is_readable_and_bounded() -> None:
    [msg] = result_messages(rejected(SESSION, "items: must not be empty"), FINISHED, with_order=False)
    event, data = decode(msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert event.type == "CheckoutFailed" and msg.topic == CHECKOUT_RESULTS
    assert data.reason is FailureReason.INVALID_REQUEST
    assert data.detail == "The checkout request is invalid: items: must not be empty"
    [long] = result_messages(rejected(SESSION, "x" * 5000), FINISHED, with_order=False)
    assert len(decode(long, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])[1].detail) == 2000


def test_a_rejected_session_answers_under_one_id_whatever_the_reason() -> None:
    """A malformed re-send of a rejected session republishes the first answer."""
    first = rejected(SESSION, "items: must not be empty")
    [again] = result_messages(from_json(json.loads(json.dumps(to_json(first)))), FINISHED,
                              with_order=False)
    [msg] = result_messages(first, FINISHED, with_order=False)
    assert first.status is SagaStatus.FAILED and first.status.terminal
    assert again.key == msg.key == SESSION
    assert decode(again, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])[0].id == decode(
        msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])[0].id


# ---- the machine's decisions, all the way to bytes -----------------------------------


def drive(events: list[SagaEvent], saga: SagaState | None = None) -> tuple[SagaState, Decision]:
    decision = None
    for event in events:
        decision = decide(CHECKOUT_V1, MachineConfig(), saga, event)
        saga = from_json(json.loads(json.dumps(to_json(decision.state))))
    assert saga is not None and decision is not None
    return saga, decision


def test_a_saga_driven_to_success_publishes_a_valid_order() -> None:
    start = Started(SESSION, initial_context(request(), "evt-1"))
    # The reply data the services send (orders echoes the order id it was given).
    data = {"ConfirmOrder": {"confirmed_at": CONFIRMED_AT},
            "CreateOrder": {"order_id": order_id_for(SESSION)},
            "AuthorizePayment": {"authorization_id": "auth_1"},
            "ReserveStock": {"hold_expires_at": "2024-05-01T12:15:00+00:00"}}
    replies = [Replied(s.action, True, data.get(s.action, {})) for s in CHECKOUT_V1.steps]
    saga, last = drive([start, *replies])
    assert last.effects[-1] == PublishOutcome(True)
    out = result_messages(saga, FINISHED, with_order=True)
    decoded = [decode(m, TOPIC_EVENT_TYPES[m.topic]) for m in out]
    assert [event.type for event, _ in decoded] == ["CheckoutSucceeded", "OrderConfirmed"]
    assert decoded[0][1].order_id == decoded[1][1].order_id == order_id_for(SESSION)
    assert decoded[0][1].total == SUBTOTAL


def test_a_payment_timeout_decided_by_the_machine_is_a_contract_reason() -> None:
    start = Started(SESSION, initial_context(request(), "evt-1"))
    saga, _ = drive([start, Replied("ReserveStock", True), Replied("CreateOrder", True)])
    saga, _ = drive([DeadlinePassed(saga.deadline_token)], saga)
    saga, last = drive([Replied(c, True) for c in ("VoidPayment", "CancelOrder", "ReleaseStock")],
                       saga)
    assert saga.status is SagaStatus.FAILED and last.effects[-1] == PublishOutcome(False)
    [msg] = result_messages(saga, FINISHED, with_order=False)
    _, data = decode(msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert data.reason is FailureReason.PAYMENT_TIMEOUT and "30 seconds" in data.detail


def test_a_failure_reply_without_a_reason_is_still_a_contract_reason() -> None:
    start = Started(SESSION, initial_context(request(), "evt-1"))
    saga, _ = drive([start, Replied("ReserveStock", False)])
    [msg] = result_messages(saga, FINISHED, with_order=False)
    _, data = decode(msg, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert data.reason is FailureReason.INVALID_REQUEST and data.detail


def test_aware_finish_times_in_any_offset_are_published_in_utc() -> None:
    tz = timezone(timedelta(hours=-5))
    [msg] = result_messages(
        state(None, SagaStatus.FAILED, Failure("OUT_OF_STOCK", "Short.", ("SKU-1",))),
        FINISHED.astimezone(tz), with_order=False,
    )
    assert json.loads(msg.value)["time"] == "2024-05-01T12:00:00.250000Z"
