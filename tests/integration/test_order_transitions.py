"""Guarded order transitions and the settlement handlers, on the real PostgreSQL.

The e2e race goes through one worker, whose consumer loop already serialises
the events of one key; here two transactions really collide on the same row,
so the ``UPDATE ... WHERE status = expected`` guard is what decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from helpers import uid

from checkout_saga.runtime import DDL
from messaging.db import create_pool, migrate
from schemas.contract import CancelOrderRequested, OrderShipped
from schemas.internal import AuthorizePayment, CapturePayment, CommandReply, RefundPayment
from services.orders import settlement
from services.orders.external import OrderEvents
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentHandlers

RACES = 100


@pytest.fixture
async def pools(stack: Any) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    out = {}
    for schema in ("orders", "payment"):
        pool = await create_pool(stack.env["DATABASE_URL"], 24)
        await migrate(pool, schema, DDL[schema])
        out[schema] = pool
    yield out
    for pool in out.values():
        await pool.close()


async def confirmed_order(conn: asyncpg.Connection) -> tuple[str, str]:
    order_id, sid = uid("ord"), uid("cs")
    await conn.execute(
        "INSERT INTO orders.orders (order_id, checkout_session_id, customer_id, status, items, "
        "subtotal, discount, total, currency, confirmed_at) VALUES ($1, $2, 'c', 'CONFIRMED', "
        "$3::jsonb, 100, 0, 100, 'USD', now())",
        order_id, sid, json.dumps([{"sku": "SKU-R", "quantity": 1, "unit_price": 100}]),
    )
    return order_id, sid


async def test_cancel_and_shipment_colliding_on_one_row_leave_one_consistent_outcome(
    pools: dict[str, asyncpg.Pool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools["orders"]
    handler = OrderEvents(pool, relay=None, retry_after=60)  # type: ignore[arg-type]
    async with pool.acquire() as conn:
        orders = [await confirmed_order(conn) for _ in range(RACES)]

    async def apply(data: Any, hold: float) -> list[Any]:
        async with pool.acquire() as conn, conn.transaction():
            out = await handler.apply(conn, data)
            await asyncio.sleep(hold)  # keep the row locked so the other one has to wait
            return out

    caplog.set_level(logging.INFO, logger="services.orders.external")
    try:
        for i, (order_id, sid) in enumerate(orders):
            cancel = CancelOrderRequested(order_id=order_id, checkout_session_id=sid)
            ship = OrderShipped(order_id=order_id, checkout_session_id=sid, carrier="UPS")
            first, second = (cancel, ship) if i % 2 else (ship, cancel)
            await asyncio.gather(apply(first, 0.005), apply(second, 0.005))
        await check_one_outcome_each(pool, [o for o, _ in orders])
    finally:  # these orders have no payment or stock: keep them from the settlement timer
        for table in ("settlements", "history", "orders"):
            await pool.execute(f"DELETE FROM orders.{table} WHERE order_id = ANY($1::text[])",
                               [o for o, _ in orders])
    # the guard really decided some of them: the loser saw zero rows and re-read
    assert any("re-reading" in r.getMessage() for r in caplog.records)


async def check_one_outcome_each(pool: asyncpg.Pool, order_ids: list[str]) -> None:
    rows = await pool.fetch(
        "SELECT o.order_id, o.status, s.kind, "
        "(SELECT count(*) FROM orders.history h WHERE h.order_id = o.order_id "
        " AND h.from_status = 'CONFIRMED' AND h.kind = 'transition') AS moves, "
        "(SELECT count(*) FROM orders.history h WHERE h.order_id = o.order_id "
        " AND h.kind = 'rejected') AS refused "
        "FROM orders.orders o LEFT JOIN orders.settlements s USING (order_id) "
        "WHERE o.order_id = ANY($1::text[])",
        order_ids,
    )
    outcomes = {"CANCELLING": 0, "SHIPPED": 0}
    for row in rows:
        assert row["moves"] == 1 and row["refused"] == 1, dict(row)
        assert row["status"] in outcomes, dict(row)
        # a cancel that won opened exactly one settlement; a shipment that won, none
        assert row["kind"] == ("CANCEL" if row["status"] == "CANCELLING" else None), dict(row)
        outcomes[row["status"]] += 1
    assert len(rows) == RACES
    assert outcomes["CANCELLING"] and outcomes["SHIPPED"], outcomes


async def test_refund_voids_an_authorization_refunds_a_capture_and_is_idempotent(
    pools: dict[str, asyncpg.Pool]
) -> None:
    pool = pools["payment"]
    handlers = PaymentHandlers(SimulatedGateway(pool, late_answer_after=1.0))
    routes = handlers.routes()

    async def run(cmd: Any) -> dict[str, Any]:
        async with pool.acquire() as conn, conn.transaction():
            outcome = await routes[type(cmd)].handler(conn, cmd)
        assert outcome.reply is not None and outcome.reply.ok, outcome
        return outcome.reply.data

    authorized, captured = uid("cs"), uid("cs")
    for sid in (authorized, captured):
        await run(AuthorizePayment(checkout_session_id=sid, amount=500, currency="USD",
                                   method="card", token="tok_visa"))
    await run(CapturePayment(checkout_session_id=captured))

    for sid, expected in ((authorized, "VOIDED"), (captured, "REFUNDED")):
        refund = RefundPayment(checkout_session_id=sid, order_id="o", reason="cancel")
        assert (await run(refund))["payment_status"] == expected
        assert (await run(refund))["payment_status"] == expected  # again: no change
        assert await pool.fetchval(
            "SELECT status FROM payment.payments WHERE checkout_session_id = $1", sid) == expected
        assert await pool.fetchval(
            "SELECT status FROM payment.gateway WHERE idempotency_key = $1", f"pay:{sid}"
        ) == expected
    # the answer is routed to the orders service, not to the saga coordinator
    assert routes[RefundPayment].reply_topic == "orders.replies"


class _Rollback(Exception):
    """Leave nothing behind for the shared workers' relay to publish."""


async def test_settlement_books_each_answer_once_resends_the_missing_step_and_finishes_once(
    pools: dict[str, asyncpg.Pool]
) -> None:
    pool = pools["orders"]
    handler = OrderEvents(pool, relay=None, retry_after=60)  # type: ignore[arg-type]

    def reply(cmd: str, sid: str, ok: bool = True, **data: Any) -> CommandReply:
        return CommandReply(checkout_session_id=sid, command=cmd, ok=ok, data=data,
                            reason=None if ok else "PAYMENT_DECLINED",
                            detail=None if ok else "gateway down")

    def kinds(out: list[Any], sid: str) -> list[tuple[str, str]]:
        return [(m.topic, json.loads(m.value)["type"]) for m in out if m.key == sid]

    with pytest.raises(_Rollback):
        async with pool.acquire() as conn, conn.transaction():
            order_id, sid = await confirmed_order(conn)
            out = await handler.apply(conn, CancelOrderRequested(
                order_id=order_id, checkout_session_id=sid, reason="changed my mind"))
            assert kinds(out, sid) == [("orders.events", "OrderStatusChanged"),
                                       ("saga.payment.commands", "RefundPayment"),
                                       ("saga.inventory.commands", "RestockOrder")]
            # a failed answer is kept, not booked
            assert await settlement.on_reply(conn, reply("RefundPayment", sid, ok=False)) == []
            assert await settlement.on_reply(
                conn, reply("RefundPayment", sid, payment_status="REFUNDED")) == []
            assert await settlement.on_reply(
                conn, reply("RefundPayment", sid, payment_status="REFUNDED")) == []  # duplicate
            # past its deadline, only the unanswered step is sent again
            await conn.execute("UPDATE orders.settlements SET next_attempt_at = now() - "
                               "interval '1 second' WHERE order_id = $1", order_id)
            again = await settlement.claim_due(conn, retry_after=60)
            assert kinds(again, sid) == [("saga.inventory.commands", "RestockOrder")]
            assert kinds(await settlement.claim_due(conn, retry_after=60), sid) == []  # backed off
            done = await settlement.on_reply(
                conn, reply("RestockOrder", sid, restocked={"SKU-R": 1}, not_restocked=[]))
            assert kinds(done, sid) == [("orders.events", "OrderStatusChanged"),
                                        ("orders.events", "OrderCancelled")]
            assert await settlement.on_reply(
                conn, reply("RestockOrder", sid, restocked={"SKU-R": 1})) == []  # duplicate
            row = await conn.fetchrow(
                "SELECT o.status, s.state, s.payment_status, s.restocked, s.attempts, s.last_error "
                "FROM orders.orders o JOIN orders.settlements s USING (order_id) "
                "WHERE order_id = $1", order_id)
            assert dict(row) == {"status": "CANCELLED", "state": "DONE",
                                 "payment_status": "REFUNDED", "restocked": '{"SKU-R": 1}',
                                 "attempts": 2,
                                 "last_error": "RefundPayment: PAYMENT_DECLINED: gateway down"}
            raise _Rollback()
