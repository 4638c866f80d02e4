"""Payment command handlers: authorize, void and capture; refund (or void) a
cancelled or returned order's payment for the orders service.

Every gateway call carries the idempotency key ``pay:<session id>``, so a
retried authorization is never a second charge. A void that arrives while the
gateway has not answered is remembered and applied when the late answer comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import asyncpg
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from messaging.service import Outcome, Route, failed, ok
from messaging.topics import ORDERS_REPLIES
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
            AuthorizePayment: Route(self.authorize, many=self.authorize_many),
            # Idempotent by state, and must run again after a late authorization.
            VoidPayment: Route(self.void, dedupe=False),
            CapturePayment: Route(self.capture, many=self.capture_many),
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
        return (await self.authorize_many(conn, [cmd]))[0]

    async def authorize_many(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        """Authorize every payment: the rows in one statement, the gateway calls
        concurrently (as a real gateway's would be), the answers in one more."""
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
        results = await asyncio.gather(*(self.authorize_with_retry(c) for c in payments))
        replies = await record_answers(conn, list(zip(sessions, results, strict=True)), self.gateway)
        return [Outcome(reply) for reply in replies]

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
        return (await self.capture_many(conn, [cmd]))[0]

    async def capture_many(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        assert all(isinstance(c, CapturePayment) for c in cmds)
        rows = await conn.fetch(
            "SELECT checkout_session_id, status FROM payment.payments "
            "WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
            [c.checkout_session_id for c in cmds],
        )
        status = {r["checkout_session_id"]: r["status"] for r in rows}
        to_capture = [c.checkout_session_id for c in cmds
                      if status.get(c.checkout_session_id) == "AUTHORIZED"]
        await asyncio.gather(*(self.gateway.capture(idempotency_key(s)) for s in to_capture))
        await set_statuses(conn, [(s, "CAPTURED", None, None) for s in to_capture])
        outcomes = []
        for cmd in cmds:
            now = status.get(cmd.checkout_session_id)
            if now in ("AUTHORIZED", "CAPTURED"):
                outcomes.append(Outcome(ok(cmd)))
            else:
                outcomes.append(Outcome(failed(cmd, "PAYMENT_DECLINED", f"Cannot capture a payment in {now}.")))
        return outcomes

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
    return (await record_answers(conn, [(session_id, result)], gateway))[0]


async def record_answers(
    conn: asyncpg.Connection, answers: list[tuple[str, Authorization]], gateway: PaymentGateway
) -> list[CommandReply | None]:
    """Book the gateway's answers (by session): one read of the voids asked
    for meanwhile, one write of every answer; a reply per answer, None while
    the gateway has not answered."""
    approved = [session for session, result in answers if isinstance(result, Approved)]
    voided = {r["checkout_session_id"] for r in await conn.fetch(
        "SELECT checkout_session_id FROM payment.payments "
        "WHERE checkout_session_id = ANY($1::text[]) AND void_requested", approved)} if approved else set()
    booked: list[tuple[str, str, str | None, str | None]] = []
    replies: list[CommandReply | None] = []
    for session, result in answers:
        cmd = AuthorizePayment.model_construct(checkout_session_id=session)
        if isinstance(result, Approved):
            if session in voided:  # the saga gave up before the gateway answered
                await gateway.void(idempotency_key(session))
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


async def _set_status(conn: asyncpg.Connection, session_id: str, status: str) -> None:
    await set_statuses(conn, [(session_id, status, None, None)])


async def set_statuses(
    conn: asyncpg.Connection, booked: list[tuple[str, str, str | None, str | None]]
) -> None:
    """Book many payments: (session, status, authorization id or None, detail or None)."""
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
