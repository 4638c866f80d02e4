"""Every topic name in one place: the contract's, and our internal ones."""

from __future__ import annotations

from schemas.contract import (
    CHECKOUT_REQUESTED,
    CHECKOUT_RESULTS,
    FULFILLMENT_EVENTS,
    ORDERS_CONFIRMED,
    ORDERS_EVENTS,
    ORDERS_REQUESTS,
    dlq_topic,
)

INVENTORY_COMMANDS = "saga.inventory.commands"
PAYMENT_COMMANDS = "saga.payment.commands"
ORDERS_COMMANDS = "saga.orders.commands"
SAGA_REPLIES = "saga.replies"
PROMOTIONS_COMMANDS = "saga.promotions.commands"
# Answers to the orders service's own commands (the cancel/return settlement:
# RefundPayment, RestockOrder), kept off saga.replies so the coordinator never
# sees a reply to a command it did not send.
ORDERS_REPLIES = "orders.replies"

COMMAND_TOPICS: dict[str, str] = {
    "inventory": INVENTORY_COMMANDS,
    "payment": PAYMENT_COMMANDS,
    "orders": ORDERS_COMMANDS,
    "promotions": PROMOTIONS_COMMANDS,
}

EXTERNAL = (
    CHECKOUT_REQUESTED,
    CHECKOUT_RESULTS,
    ORDERS_CONFIRMED,
    ORDERS_REQUESTS,
    ORDERS_EVENTS,
    FULFILLMENT_EVENTS,
)
INTERNAL = (INVENTORY_COMMANDS, PAYMENT_COMMANDS, ORDERS_COMMANDS, SAGA_REPLIES, ORDERS_REPLIES,
            PROMOTIONS_COMMANDS)

# Topics some worker of ours consumes: each has a dead-letter topic.
CONSUMED = (
    CHECKOUT_REQUESTED,
    SAGA_REPLIES,
    INVENTORY_COMMANDS,
    PAYMENT_COMMANDS,
    ORDERS_COMMANDS,
    ORDERS_REQUESTS,
    FULFILLMENT_EVENTS,
    ORDERS_REPLIES,
    PROMOTIONS_COMMANDS,
)


def all_topics() -> tuple[str, ...]:
    return EXTERNAL + INTERNAL + tuple(dlq_topic(t) for t in CONSUMED)


# Consumer group of each role, and what it reads (replay resolves groups here).
GROUPS: dict[str, tuple[str, ...]] = {
    "checkout-saga.coordinator": (CHECKOUT_REQUESTED, SAGA_REPLIES),
    "checkout-saga.inventory": (INVENTORY_COMMANDS,),
    "checkout-saga.payment": (PAYMENT_COMMANDS,),
    "checkout-saga.promotions": (PROMOTIONS_COMMANDS,),
    "checkout-saga.orders": (ORDERS_COMMANDS, ORDERS_REQUESTS, FULFILLMENT_EVENTS, ORDERS_REPLIES),
}

__all__ = [
    "CHECKOUT_REQUESTED",
    "CHECKOUT_RESULTS",
    "FULFILLMENT_EVENTS",
    "ORDERS_CONFIRMED",
    "ORDERS_EVENTS",
    "ORDERS_REQUESTS",
    "dlq_topic",
]
