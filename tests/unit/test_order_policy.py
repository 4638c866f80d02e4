"""The order's life after checkout, as a pure table: every event in every status."""

from __future__ import annotations

import itertools

import pytest
from pydantic import BaseModel

from schemas.contract import (
    TOPIC_EVENT_TYPES,
    CancelOrderRequested,
    OrderDelivered,
    OrderShipped,
    ReturnInitiated,
    ReturnReceived,
    ReturnRequested,
)
from services.orders.lifecycle import TRANSITIONS, OrderStatus, can_move, path_to
from services.orders.policy import (
    ANNOUNCE,
    RULES,
    Accept,
    Reject,
    RejectReason,
    Settle,
    announce,
    describe,
    judge,
    unknown_order,
)

S = OrderStatus
EVENTS = list(RULES)


def test_every_external_event_type_has_a_rule() -> None:
    consumed = {**TOPIC_EVENT_TYPES["orders.requests"], **TOPIC_EVENT_TYPES["fulfillment.events"]}
    assert set(RULES) == set(consumed.values()) == set(ANNOUNCE)


@pytest.mark.parametrize(("event", "status"), list(itertools.product(EVENTS, S)))
def test_each_event_in_each_status_is_accepted_legally_or_refused_with_a_sentence(
    event: type[BaseModel], status: OrderStatus
) -> None:
    verdict = judge(event, "ord-1", status)
    if isinstance(verdict, Accept):
        assert status is RULES[event].accept_from
        current = status
        for target in verdict.path:
            assert can_move(current, target)
            current = target
    else:
        assert isinstance(verdict, Reject)
        assert status is not RULES[event].accept_from
        assert "ord-1" in verdict.detail and str(status) in verdict.detail
        assert verdict.detail.endswith(".")


@pytest.mark.parametrize(
    ("event", "start", "end", "settle"),
    [
        (CancelOrderRequested, S.CONFIRMED, S.CANCELLING, Settle.CANCEL),
        (ReturnRequested, S.DELIVERED, S.RETURN_INITIATED, None),
        (OrderShipped, S.CONFIRMED, S.SHIPPED, None),
        (OrderDelivered, S.SHIPPED, S.DELIVERED, None),
        (ReturnReceived, S.RETURN_INITIATED, S.RETURNED, Settle.RETURN),
    ],
)
def test_the_one_accepted_move_per_event(
    event: type[BaseModel], start: OrderStatus, end: OrderStatus, settle: Settle | None
) -> None:
    assert judge(event, "o", start) == Accept((end,), settle)
    accepted = [s for s in S if isinstance(judge(event, "o", s), Accept)]
    assert accepted == [start]


@pytest.mark.parametrize(
    ("event", "status", "reason"),
    [
        (CancelOrderRequested, S.SHIPPED, RejectReason.ALREADY_SHIPPED),
        (CancelOrderRequested, S.DELIVERED, RejectReason.ALREADY_SHIPPED),
        (CancelOrderRequested, S.CANCELLING, RejectReason.ORDER_CANCELLED),
        (CancelOrderRequested, S.PENDING, RejectReason.NOT_CONFIRMED),
        (OrderShipped, S.CANCELLED, RejectReason.ORDER_CANCELLED),
        (OrderShipped, S.CANCELLING, RejectReason.ORDER_CANCELLED),
        (OrderShipped, S.SHIPPED, RejectReason.ALREADY_SHIPPED),
        (OrderDelivered, S.CONFIRMED, RejectReason.NOT_SHIPPED),
        (OrderDelivered, S.DELIVERED, RejectReason.ALREADY_DELIVERED),
        (ReturnRequested, S.SHIPPED, RejectReason.NOT_DELIVERED),
        (ReturnRequested, S.RETURN_INITIATED, RejectReason.RETURN_ALREADY_REQUESTED),
        (ReturnReceived, S.DELIVERED, RejectReason.RETURN_NOT_REQUESTED),
        (ReturnReceived, S.RETURNED, RejectReason.ALREADY_RETURNED),
    ],
)
def test_illegal_and_out_of_order_events_are_refused_with_the_right_reason(
    event: type[BaseModel], status: OrderStatus, reason: RejectReason
) -> None:
    verdict = judge(event, "o", status)
    assert isinstance(verdict, Reject) and verdict.reason is reason


@pytest.mark.parametrize("status", list(S))
def test_cancel_and_shipment_exclude_each_other_in_either_order(status: OrderStatus) -> None:
    """Whichever of the two is applied first, the second is refused."""
    for first, second in ((CancelOrderRequested, OrderShipped),
                          (OrderShipped, CancelOrderRequested)):
        verdict = judge(first, "o", status)
        if isinstance(verdict, Accept):
            after = verdict.path[-1]
            assert isinstance(judge(second, "o", after), Reject)
            if after is S.CANCELLING:  # and still after the cancel saga finished
                assert isinstance(judge(second, "o", S.CANCELLED), Reject)


def test_every_status_reachable_after_checkout_is_reached_by_some_event() -> None:
    reached = {v.path[-1] for e in EVENTS for s in S
               if isinstance(v := judge(e, "o", s), Accept)}
    assert reached == {S.CANCELLING, S.SHIPPED, S.DELIVERED, S.RETURN_INITIATED, S.RETURNED}


def test_the_cancel_saga_states_are_in_the_transition_table() -> None:
    assert TRANSITIONS[S.CANCELLING] == frozenset({S.CANCELLED})
    assert can_move(S.CONFIRMED, S.CANCELLING)
    assert not can_move(S.CANCELLING, S.SHIPPED)
    assert not can_move(S.SHIPPED, S.CANCELLING)
    # checkout compensation still cancels straight from CONFIRMED's predecessors
    assert path_to(S.PENDING, S.CANCELLED) == (S.CANCELLED,)


def test_unknown_order_names_the_order_and_the_session() -> None:
    verdict = unknown_order(CancelOrderRequested, "ord-x", "cs-y")
    assert verdict.reason is RejectReason.UNKNOWN_ORDER
    assert "ord-x" in verdict.detail and "cs-y" in verdict.detail


def test_announcements() -> None:
    ids = {"order_id": "o", "checkout_session_id": "cs"}
    shipped = OrderShipped(**ids, carrier="UPS", tracking_number="1Z")
    assert announce(shipped) == [shipped]
    assert announce(OrderDelivered(**ids)) == [OrderDelivered(**ids)]
    assert announce(ReturnRequested(**ids, reason="too big")) == [
        ReturnInitiated(**ids, reason="too big")
    ]
    # these two wait for the money and the stock to be back
    assert announce(CancelOrderRequested(**ids)) == []
    assert announce(ReturnReceived(**ids)) == []


def test_describe_keeps_what_the_event_carried() -> None:
    ids = {"order_id": "o", "checkout_session_id": "cs"}
    assert describe(OrderShipped(**ids, carrier="UPS", tracking_number="1Z")) == (
        "OrderShipped (carrier UPS, tracking_number 1Z)"
    )
    assert describe(CancelOrderRequested(**ids, reason="changed my mind")) == (
        "CancelOrderRequested (reason changed my mind)"
    )
    assert describe(OrderDelivered(**ids)) == "OrderDelivered"
