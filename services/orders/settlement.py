"""The cancel / return saga: the money and the stock go back, as persisted steps.

    accepted (same transaction as the move to CANCELLING or RETURNED):
        row in orders.settlements (RUNNING) + RefundPayment -> saga.payment.commands
                                            + RestockOrder  -> saga.inventory.commands
    each answer on orders.replies books its step (payment_status / restocked)
    both booked: row DONE, and
        CANCEL: CANCELLING -> CANCELLED, OrderCancelled
        RETURN: OrderReturned (the order is RETURNED already)

Crash-safe by construction: the row, the commands (outbox) and every booking
commit together; the payment and inventory handlers are idempotent (inbox) and
re-send their recorded answer; a step that stays unanswered (a lost message, a
failing handler) has its command sent again by ``resend_due`` with capped
exponential backoff, until it succeeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from messaging.errors import PermanentError
from messaging.message import OutgoingMessage
from messaging.messages import event_message
from messaging.outbox import Publisher
from messaging.topics import INVENTORY_COMMANDS, ORDERS_EVENTS, PAYMENT_COMMANDS
from messaging.unit_of_work import unit_of_work
from schemas.contract import LineItem, OrderCancelled, OrderReturned
from schemas.internal import CommandReply, RefundPayment, RestockOrder
from services.orders import store
from services.orders.handlers import SOURCE, walk
from services.orders.lifecycle import OrderStatus
from services.orders.policy import Settle

log = logging.getLogger(__name__)
SCHEMA = "orders"


def commands(
    order: asyncpg.Record, reason: str, attempt: int, payment: bool = True, stock: bool = True
) -> list[OutgoingMessage]:
    sid, order_id = order["checkout_session_id"], order["order_id"]
    out: list[OutgoingMessage] = []
    if payment:
        refund = RefundPayment(checkout_session_id=sid, attempt=attempt, order_id=order_id,
                               reason=reason)
        out.append(event_message(PAYMENT_COMMANDS, "RefundPayment", SOURCE, sid, refund))
    if stock:
        items = [LineItem.model_validate(i) for i in json.loads(order["items"])]
        restock = RestockOrder(checkout_session_id=sid, attempt=attempt, order_id=order_id,
                               items=items, reason=reason)
        out.append(event_message(INVENTORY_COMMANDS, "RestockOrder", SOURCE, sid, restock))
    return out


async def start(
    conn: asyncpg.Connection, order: asyncpg.Record, kind: Settle, reason: str, retry_after: float
) -> list[OutgoingMessage]:
    """Open the settlement; called in the transaction that made the guarded move."""
    inserted = await conn.fetchval(
        "INSERT INTO orders.settlements (order_id, checkout_session_id, kind, reason, "
        "next_attempt_at) VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) "
        "ON CONFLICT DO NOTHING RETURNING true",
        order["order_id"], order["checkout_session_id"], kind.value, reason, retry_after,
    )
    if not inserted:  # the guarded move lets only one through; say so if that ever breaks
        log.error("settlement for order %s already exists; not started twice", order["order_id"])
        return []
    return commands(order, reason, attempt=1)


# ---- answers on orders.replies ----------------------------------------------------


async def _book_payment(conn: asyncpg.Connection, reply: CommandReply) -> str | None:
    status = str(reply.data.get("payment_status", "NONE"))
    booked = await conn.fetchval(
        "UPDATE orders.settlements SET payment_status = $2, updated_at = now() "
        "WHERE checkout_session_id = $1 AND payment_status IS NULL RETURNING true",
        reply.checkout_session_id, status,
    )
    return f"payment {status}" if booked else None


async def _book_stock(conn: asyncpg.Connection, reply: CommandReply) -> str | None:
    restocked = reply.data.get("restocked", {})
    booked = await conn.fetchval(
        "UPDATE orders.settlements SET restocked = $2::jsonb, updated_at = now() "
        "WHERE checkout_session_id = $1 AND restocked IS NULL RETURNING true",
        reply.checkout_session_id, json.dumps(restocked),
    )
    if not booked:
        return None
    lines = ", ".join(f"{sku} x{n}" for sku, n in sorted(restocked.items())) or "nothing"
    missing = reply.data.get("not_restocked") or []
    return f"stock back on sale: {lines}" + (f"; not restocked: {missing}" if missing else "")


BOOK: Mapping[str, Callable[[asyncpg.Connection, CommandReply], Awaitable[str | None]]] = {
    "RefundPayment": _book_payment,
    "RestockOrder": _book_stock,
}


async def on_reply(conn: asyncpg.Connection, reply: CommandReply) -> list[OutgoingMessage]:
    """Book one answer (idempotent by state) and finish the settlement when both are in."""
    book = BOOK.get(reply.command)
    if book is None:
        raise PermanentError(f"orders.replies does not expect a {reply.command} answer")
    order = await store.by_session(conn, reply.checkout_session_id)
    if order is None:
        raise PermanentError(f"{reply.command} answer for unknown session {reply.checkout_session_id}")
    if not reply.ok:  # left unbooked: resend_due asks again later
        await conn.execute(
            "UPDATE orders.settlements SET last_error = $2, updated_at = now() "
            "WHERE checkout_session_id = $1",
            reply.checkout_session_id, f"{reply.command}: {reply.reason}: {reply.detail}",
        )
        log.error("settlement of order %s: %s failed (%s: %s); will retry", order["order_id"],
                  reply.command, reply.reason, reply.detail)
        return []
    booked = await book(conn, reply)
    if booked is None:
        log.info("settlement of order %s: duplicate %s answer ignored", order["order_id"],
                 reply.command)
        return []
    await store.note(conn, order["order_id"], OrderStatus(order["status"]), "note", booked)
    return await _finish(conn, order)


async def _finish(conn: asyncpg.Connection, order: asyncpg.Record) -> list[OutgoingMessage]:
    row = await conn.fetchrow(
        "UPDATE orders.settlements SET state = 'DONE', finished_at = now(), updated_at = now() "
        "WHERE checkout_session_id = $1 AND state = 'RUNNING' "
        "AND payment_status IS NOT NULL AND restocked IS NOT NULL RETURNING kind, reason",
        order["checkout_session_id"],
    )
    if row is None:
        return []
    sid, order_id, reason = order["checkout_session_id"], order["order_id"], row["reason"]
    if Settle(row["kind"]) is Settle.CANCEL:
        events = await walk(conn, order, (OrderStatus.CANCELLED,), reason)
        cancelled = OrderCancelled(order_id=order_id, checkout_session_id=sid, reason=reason)
        return events + [event_message(ORDERS_EVENTS, "OrderCancelled", SOURCE, sid, cancelled)]
    await store.note(conn, order_id, OrderStatus(order["status"]), "note",
                     "return settled: refunded and restocked")
    returned = OrderReturned(order_id=order_id, checkout_session_id=sid)
    return [event_message(ORDERS_EVENTS, "OrderReturned", SOURCE, sid, returned)]


# ---- the retry timer ------------------------------------------------------------


async def resend_due(pool: asyncpg.Pool, relay: Publisher, retry_after: float,
                     limit: int = 200) -> int:
    """Send again the commands of settlements still waiting past their deadline."""
    async with unit_of_work(pool, SCHEMA, relay) as work:
        out = await claim_due(work.conn, retry_after, limit)
        await work.send(out)
    return len(out)


async def claim_due(conn: asyncpg.Connection, retry_after: float, limit: int = 200
                    ) -> list[OutgoingMessage]:
    """Push the deadline of due settlements back (capped exponential backoff)
    and return the commands of their unanswered steps."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT order_id FROM orders.settlements
            WHERE state = 'RUNNING' AND next_attempt_at <= now()
            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        UPDATE orders.settlements s SET attempts = s.attempts + 1, updated_at = now(),
            next_attempt_at = now() + make_interval(
                secs => $2 * least(power(2, s.attempts), 32))
        FROM due WHERE s.order_id = due.order_id
        RETURNING s.order_id, s.reason, s.attempts,
            s.payment_status IS NULL AS payment, s.restocked IS NULL AS stock
        """,
        limit, retry_after,
    )
    out: list[OutgoingMessage] = []
    for row in rows:
        order = await store.by_id(conn, row["order_id"])
        assert order is not None
        log.warning("settlement of order %s unanswered: sending again (attempt %d)",
                    row["order_id"], row["attempts"])
        out += commands(order, row["reason"], row["attempts"], row["payment"], row["stock"])
    return out
