"""AuthorizePayment and CapturePayment for many checkout sessions at once:
the rules of ``handlers``, with the database work of a whole lane in a few
statements and the gateway calls made concurrently, as a real gateway's
would be."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

import asyncpg

from checkout_saga.service import Outcome, Route, failed, ok
from schemas.internal import AuthorizePayment, CapturePayment, Command, CommandReply
from services.payment.gateway import Approved, Authorization, Declined
from services.payment.handlers import PaymentHandlers, idempotency_key


class PaymentLane:
    def __init__(self, handlers: PaymentHandlers) -> None:
        self._handlers = handlers
        self._gateway = handlers.gateway

    async def authorize(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        payments = [c for c in cmds if isinstance(c, AuthorizePayment)]
        assert len(payments) == len(cmds)
        sessions = [c.checkout_session_id for c in payments]
        await conn.execute(
            "INSERT INTO payment.payments (checkout_session_id, idempotency_key, amount, currency, "
            "status) SELECT s, k, a, c, 'PENDING' FROM unnest($1::text[], $2::text[], $3::bigint[], "
            "$4::text[]) AS p(s, k, a, c) ON CONFLICT DO NOTHING",
            sessions, [idempotency_key(s) for s in sessions], [c.amount for c in payments],
            [c.currency for c in payments],
        )
        results = await asyncio.gather(*(self._handlers.authorize_with_retry(c) for c in payments))
        replies = await self._record(conn, payments, list(results))
        return [Outcome(reply) for reply in replies]

    async def _record(
        self, conn: asyncpg.Connection, cmds: list[AuthorizePayment], results: list[Authorization]
    ) -> list[CommandReply | None]:
        """``handlers.record_answer`` for the lane: one read of the voids asked
        for meanwhile, one write of every answer."""
        approved = [c.checkout_session_id for c, r in zip(cmds, results, strict=True)
                    if isinstance(r, Approved)]
        voided = {r["checkout_session_id"] for r in await conn.fetch(
            "SELECT checkout_session_id FROM payment.payments "
            "WHERE checkout_session_id = ANY($1::text[]) AND void_requested", approved)} if approved else set()
        booked: list[tuple[str, str, str | None, str | None]] = []
        replies: list[CommandReply | None] = []
        for cmd, result in zip(cmds, results, strict=True):
            session = cmd.checkout_session_id
            if isinstance(result, Approved):
                if session in voided:  # the saga gave up before the gateway answered
                    await self._gateway.void(idempotency_key(session))
                    booked.append((session, "VOIDED", None, None))
                else:
                    booked.append((session, "AUTHORIZED", result.authorization_id, None))
                replies.append(ok(cmd, authorization_id=result.authorization_id))
            elif isinstance(result, Declined):
                booked.append((session, "DECLINED", None, result.detail))
                replies.append(failed(cmd, "PAYMENT_DECLINED", result.detail))
            else:
                replies.append(None)  # pending: the late answer replies
        await set_statuses(conn, booked)
        return replies

    async def capture(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        assert all(isinstance(c, CapturePayment) for c in cmds)
        rows = await conn.fetch(
            "SELECT checkout_session_id, status FROM payment.payments "
            "WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
            [c.checkout_session_id for c in cmds],
        )
        status = {r["checkout_session_id"]: r["status"] for r in rows}
        to_capture = [c.checkout_session_id for c in cmds
                      if status.get(c.checkout_session_id) == "AUTHORIZED"]
        await asyncio.gather(*(self._gateway.capture(idempotency_key(s)) for s in to_capture))
        await set_statuses(conn, [(s, "CAPTURED", None, None) for s in to_capture])
        outcomes = []
        for cmd in cmds:
            now = status.get(cmd.checkout_session_id)
            if now in ("AUTHORIZED", "CAPTURED"):
                outcomes.append(Outcome(ok(cmd)))
            else:
                outcomes.append(Outcome(failed(cmd, "PAYMENT_DECLINED", f"Cannot capture a payment in {now}.")))
        return outcomes


async def set_statuses(
    conn: asyncpg.Connection, booked: list[tuple[str, str, str | None, str | None]]
) -> None:
    """``handlers._set_status`` for many payments: (session, status, authorization id, detail)."""
    if not booked:
        return
    await conn.execute(
        "UPDATE payment.payments p SET status = b.st, "
        "authorization_id = coalesce(b.auth, p.authorization_id), "
        "detail = coalesce(b.detail, p.detail), updated_at = now() "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS b(s, st, auth, detail) "
        "WHERE p.checkout_session_id = b.s",
        *(list(column) for column in zip(*booked, strict=True)),
    )


def routes(handlers: PaymentHandlers) -> Mapping[type[Command], Route]:
    """The payment service's routes: ``handlers.routes()`` with the lane versions attached."""
    lane = PaymentLane(handlers)
    single = handlers.routes()
    return {
        **single,
        AuthorizePayment: dataclasses.replace(single[AuthorizePayment], many=lane.authorize),
        CapturePayment: dataclasses.replace(single[CapturePayment], many=lane.capture),
    }
