"""Payment command handlers: authorize, void and capture; refund (or void) a
cancelled or returned order's payment for the orders service.

Every gateway call carries the idempotency key ``pay:<session id>``, so a
retried authorization is never a second charge. A void that arrives while the
gateway has not answered is remembered and applied when the late answer comes.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from checkout_saga.service import Outcome, Route, failed, ok
from checkout_saga.topics import ORDERS_REPLIES
from schemas.internal import (
    AuthorizePayment,
    CapturePayment,
    Command,
    CommandReply,
    RefundPayment,
    VoidPayment,
)
from services.payment.gateway import (
    Approved,
    Authorization,
    Declined,
    GatewayUnavailable,
    PaymentGateway,
)


def idempotency_key(session_id: str) -> str:
    return f"pay:{session_id}"


class PaymentHandlers:
    def __init__(self, gateway: PaymentGateway, attempts: int = 5) -> None:
        self.gateway = gateway
        self._attempts = attempts

    def routes(self) -> Mapping[type[Command], Route]:
        return {
            AuthorizePayment: Route(self.authorize),
            # Idempotent by state, and must run again after a late authorization.
            VoidPayment: Route(self.void, dedupe=False),
            CapturePayment: Route(self.capture),
            RefundPayment: Route(self.refund, reply_topic=ORDERS_REPLIES),
        }

    async def authorize_with_retry(self, cmd: AuthorizePayment) -> Authorization:
        key = idempotency_key(cmd.checkout_session_id)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(GatewayUnavailable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.02, max=0.5),
            reraise=True,
        ):
            with attempt:
                return await self.gateway.authorize(key, cmd.amount, cmd.currency, cmd.token)
        raise AssertionError("unreachable")

    async def authorize(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        assert isinstance(cmd, AuthorizePayment)
        await conn.execute(
            "INSERT INTO payment.payments (checkout_session_id, idempotency_key, amount, currency, "
            "status) VALUES ($1, $2, $3, $4, 'PENDING') ON CONFLICT DO NOTHING",
            cmd.checkout_session_id, idempotency_key(cmd.checkout_session_id), cmd.amount,
            cmd.currency,
        )
        result = await self.authorize_with_retry(cmd)
        return Outcome(await record_answer(conn, cmd.checkout_session_id, result, self.gateway))

    async def void(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        assert isinstance(cmd, VoidPayment)
        row = await conn.fetchrow(
            "SELECT status FROM payment.payments WHERE checkout_session_id = $1 FOR UPDATE",
            cmd.checkout_session_id,
        )
        status = row["status"] if row else None
        if status == "AUTHORIZED":
            await self.gateway.void(idempotency_key(cmd.checkout_session_id))
            await _set_status(conn, cmd.checkout_session_id, "VOIDED")
        elif status == "PENDING":
            await conn.execute(
                "UPDATE payment.payments SET void_requested = true, updated_at = now() "
                "WHERE checkout_session_id = $1",
                cmd.checkout_session_id,
            )
        return Outcome(ok(cmd, payment_status=status or "NONE"))

    async def capture(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        assert isinstance(cmd, CapturePayment)
        status = await conn.fetchval(
            "SELECT status FROM payment.payments WHERE checkout_session_id = $1 FOR UPDATE",
            cmd.checkout_session_id,
        )
        if status == "AUTHORIZED":
            await self.gateway.capture(idempotency_key(cmd.checkout_session_id))
            await _set_status(conn, cmd.checkout_session_id, "CAPTURED")
        elif status != "CAPTURED":
            return Outcome(failed(cmd, "PAYMENT_DECLINED", f"Cannot capture a payment in {status}."))
        return Outcome(ok(cmd))

    async def refund(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        """Money back for a cancelled or returned order: refund a capture, void an
        authorization; idempotent by state (the gateway call is keyed too)."""
        assert isinstance(cmd, RefundPayment)
        key = idempotency_key(cmd.checkout_session_id)
        status = await conn.fetchval(
            "SELECT status FROM payment.payments WHERE checkout_session_id = $1 FOR UPDATE",
            cmd.checkout_session_id,
        )
        if status == "CAPTURED":
            await self.gateway.refund(key)
            status = "REFUNDED"
        elif status == "AUTHORIZED":
            await self.gateway.void(key)
            status = "VOIDED"
        elif status == "PENDING":  # cannot be for a confirmed order; void the late answer
            await conn.execute(
                "UPDATE payment.payments SET void_requested = true, updated_at = now() "
                "WHERE checkout_session_id = $1",
                cmd.checkout_session_id,
            )
        if status in ("REFUNDED", "VOIDED"):
            await _set_status(conn, cmd.checkout_session_id, status)
        return Outcome(ok(cmd, payment_status=status or "NONE"))


async def record_answer(
    conn: asyncpg.Connection, session_id: str, result: Authorization, gateway: PaymentGateway
) -> CommandReply | None:
    """Book the gateway's answer; None while the gateway has not answered."""
    cmd = AuthorizePayment.model_construct(checkout_session_id=session_id)
    if isinstance(result, Approved):
        void_requested = await conn.fetchval(
            "SELECT void_requested FROM payment.payments WHERE checkout_session_id = $1",
            session_id,
        )
        if void_requested:  # the saga gave up before the gateway answered
            await gateway.void(idempotency_key(session_id))
            await _set_status(conn, session_id, "VOIDED")
        else:
            await _set_status(conn, session_id, "AUTHORIZED", result.authorization_id)
        return ok(cmd, authorization_id=result.authorization_id)
    if isinstance(result, Declined):
        await _set_status(conn, session_id, "DECLINED", detail=result.detail)
        return failed(cmd, "PAYMENT_DECLINED", result.detail)
    return None


async def _set_status(
    conn: asyncpg.Connection,
    session_id: str,
    status: str,
    authorization_id: str | None = None,
    detail: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE payment.payments SET status = $2, authorization_id = coalesce($3, authorization_id), "
        "detail = coalesce($4, detail), updated_at = now() WHERE checkout_session_id = $1",
        session_id, status, authorization_id, detail,
    )
