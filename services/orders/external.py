"""The orders service's consumer of the outside world after checkout.

- ``orders.requests`` (customer service) and ``fulfillment.events`` (the
  warehouse): deduplicated by CloudEvents ``id`` in ``orders.event_inbox``
  (contract guarantee 5), judged by the pure table in ``policy``, applied with
  guarded moves; the announcements go to ``orders.events`` through the outbox,
  in the same transaction.
- ``orders.replies``: the answers to the settlement's own commands.

An event that cannot change the order (a cancel after shipment, a shipment of a
cancelled order, a delivery before the shipment, an unknown order, a second
shipment with a new id) changes nothing: it is logged (warning), recorded in
the order's history (kind ``rejected``) and answered on ``orders.events`` with
``OrderRequestRejected`` (reason code and a sentence), for requests and for
fulfillment events alike, so the warehouse hears about a parcel it should not
have sent. Unreadable input raises ``PermanentError``: the worker dead-letters
it to ``<topic>.dlq`` and moves on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from confluent_kafka import Message
from pydantic import BaseModel

from messaging.errors import PermanentError, TransientError
from messaging.message import OutgoingMessage
from messaging.messages import event_message, parse_message
from messaging.outbox import Publisher
from messaging.topics import FULFILLMENT_EVENTS, ORDERS_EVENTS, ORDERS_REPLIES, ORDERS_REQUESTS
from messaging.unit_of_work import unit_of_work
from schemas.contract import (
    TOPIC_EVENT_TYPES,
    CancelOrderRequested,
    OrderDelivered,
    OrderRequestRejected,
    OrderShipped,
    ReturnReceived,
    ReturnRequested,
)
from schemas.internal import REPLY_TYPE, CommandReply
from services.orders import settlement, store
from services.orders.handlers import SOURCE, walk
from services.orders.lifecycle import OrderStatus
from services.orders.policy import Accept, Reject, announce, describe, judge, unknown_order

log = logging.getLogger(__name__)
SCHEMA = "orders"
# Every lost race means the order moved on along a finite graph, so a handful
# of re-reads always settles; more means something is badly wrong: retry later.
MAX_REREADS = 10

Handler = Callable[[Message], Awaitable[None]]
OrderEvent = CancelOrderRequested | ReturnRequested | OrderShipped | OrderDelivered | ReturnReceived


def ids(data: BaseModel) -> tuple[str, str]:
    """The order id and checkout session id every order event carries."""
    if not isinstance(data, OrderEvent):
        raise PermanentError(f"{type(data).__name__} is not an order event")
    return data.order_id, data.checkout_session_id


class OrderEvents:
    def __init__(self, pool: asyncpg.Pool, relay: Publisher, retry_after: float) -> None:
        self._pool = pool
        self._relay = relay
        self._retry_after = retry_after

    def routes(self) -> dict[str, Handler]:
        """The topics this consumer reads, and who handles each."""
        return {
            ORDERS_REQUESTS: self.handle_event,
            FULFILLMENT_EVENTS: self.handle_event,
            ORDERS_REPLIES: self.handle_reply,
        }

    async def handle_event(self, msg: Message) -> None:
        topic = msg.topic() or ""
        event, data = parse_message(msg, TOPIC_EVENT_TYPES[topic])
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            fresh = await work.conn.fetchval(
                "INSERT INTO orders.event_inbox (event_id, topic, type, order_id) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
                event.id, topic, event.type, ids(data)[0],
            )
            if not fresh:
                log.info("%s %s (id %s) already handled: duplicate ignored", topic, event.type,
                         event.id)
                return
            await work.send(await self.apply(work.conn, data))

    async def apply(self, conn: asyncpg.Connection, data: BaseModel) -> list[OutgoingMessage]:
        """Judge the event against the order as it is now; on a lost race, re-read."""
        order_id, session_id = ids(data)
        for _ in range(MAX_REREADS):
            order = await store.by_id(conn, order_id)
            if order is None or order["checkout_session_id"] != session_id:
                return [self._rejected(data, unknown_order(type(data), order_id, session_id))]
            status = OrderStatus(order["status"])
            verdict = judge(type(data), order_id, status)
            if isinstance(verdict, Reject):
                await store.note(conn, order_id, status, "rejected",
                                 f"{verdict.reason}: {verdict.detail}")
                return [self._rejected(data, verdict)]
            try:
                return await self._accept(conn, order, data, verdict)
            except store.LostRace:
                log.info("order %s moved while handling %s: re-reading", order_id,
                         type(data).__name__)
        raise TransientError(f"order {order_id} kept moving; try again")

    async def _accept(
        self, conn: asyncpg.Connection, order: asyncpg.Record, data: BaseModel, verdict: Accept
    ) -> list[OutgoingMessage]:
        sid = order["checkout_session_id"]
        reason = describe(data)
        out = await walk(conn, order, verdict.path, reason)
        out += [event_message(ORDERS_EVENTS, type(e).__name__, SOURCE, sid, e)
                for e in announce(data)]
        if verdict.settle is not None:
            why = getattr(data, "reason", None) or f"{verdict.settle.value.lower()} requested"
            out += await settlement.start(conn, order, verdict.settle, why, self._retry_after)
        log.info("order %s: %s -> %s on %s", order["order_id"], order["status"],
                 verdict.path[-1], type(data).__name__)
        return out

    def _rejected(self, data: BaseModel, verdict: Reject) -> OutgoingMessage:
        log.warning("%s (%s)", verdict.detail, verdict.reason)
        order_id, sid = ids(data)
        rejected = OrderRequestRejected(
            order_id=order_id, checkout_session_id=sid,
            reason=verdict.reason.value, detail=verdict.detail,
        )
        return event_message(ORDERS_EVENTS, "OrderRequestRejected", SOURCE, sid, rejected)

    async def handle_reply(self, msg: Message) -> None:
        _, reply = parse_message(msg, {REPLY_TYPE: CommandReply})
        assert isinstance(reply, CommandReply)
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            await work.send(await settlement.on_reply(work.conn, reply))
