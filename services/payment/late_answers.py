"""The timer that books the gateway's late answers (``tok_timeout``).

When the gateway finally authorizes, the payment is recorded and the reply
sent; if the saga already gave up, the authorization is voided on the spot
and the coordinator, seeing a late success, voids it again (harmless).
"""

from __future__ import annotations

import asyncpg

from messaging.outbox import Publisher
from messaging.service import reply_message
from messaging.unit_of_work import unit_of_work
from services.payment.gateway import PaymentGateway, Pending
from services.payment.handlers import record_answer

SOURCE = "urn:checkout-saga:payment"


async def book_late_answers(pool: asyncpg.Pool, gateway: PaymentGateway, relay: Publisher) -> int:
    """Ask the gateway again (same idempotency key) about every unanswered payment."""
    await gateway.answered_late(500)
    booked = 0
    async with unit_of_work(pool, "payment", relay) as work:
        conn = work.conn
        rows = await conn.fetch(
            "SELECT checkout_session_id, idempotency_key, amount, currency FROM payment.payments "
            "WHERE status = 'PENDING' AND updated_at < now() - interval '200 milliseconds' "
            "ORDER BY updated_at LIMIT 200 FOR UPDATE SKIP LOCKED"
        )
        for row in rows:
            answer = await gateway.authorize(
                row["idempotency_key"], row["amount"], row["currency"], ""
            )
            if isinstance(answer, Pending):
                continue
            reply = await record_answer(conn, row["checkout_session_id"], answer, gateway)
            if reply is not None:
                await work.send([reply_message(SOURCE, reply)])
                booked += 1
    return booked
