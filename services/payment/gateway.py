"""The payment gateway port and the built-in simulator.

The simulator behaves by token, as in the contract:

    tok_chargeDeclined     declined
    tok_insufficientFunds  declined, insufficient funds
    tok_timeout            no answer now; it authorizes later (a late answer)
    tok_flaky              two transient errors, then approved
    any other tok_...      approved

It keeps its own books (table ``payment.gateway``) outside the caller's
transaction, as a real gateway would, and honours an idempotency key: the
same key never authorizes twice. Calls made together (a lane's
``asyncio.gather``) are booked in one statement (`Coalescer`): the books are
the same, the commits and round trips are one per batch instead of one per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

import asyncpg

from messaging.coalesce import Coalescer
from messaging.errors import TransientError


class GatewayUnavailable(TransientError):
    """The gateway hiccuped; the same call with the same key may be retried."""


@dataclass(frozen=True)
class Approved:
    authorization_id: str


@dataclass(frozen=True)
class Declined:
    detail: str


@dataclass(frozen=True)
class Pending:
    answer_at: datetime


Authorization = Approved | Declined | Pending


class PaymentGateway(Protocol):
    async def authorize(self, key: str, amount: int, currency: str, token: str) -> Authorization: ...
    async def void(self, key: str) -> None: ...
    async def capture(self, key: str) -> None: ...
    async def refund(self, key: str) -> None: ...
    async def answered_late(self, limit: int) -> list[str]: ...


GATEWAY_DDL = """
CREATE TABLE IF NOT EXISTS payment.gateway (
    idempotency_key text PRIMARY KEY,
    token text NOT NULL,
    amount bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    answer_at timestamptz,
    late_answer_seen boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gateway_pending ON payment.gateway (answer_at)
    WHERE status = 'PENDING';
"""

_DECLINES = {
    "tok_chargeDeclined": "The card was declined.",
    "tok_insufficientFunds": "The card was declined: insufficient funds.",
}


class SimulatedGateway:
    def __init__(self, pool: asyncpg.Pool, late_answer_after: float) -> None:
        self._pool = pool
        self._late = late_answer_after
        self._book: Coalescer[str, tuple[str, int, str, str, float], asyncpg.Record] = (
            Coalescer(self._book_many))
        self._moves: dict[tuple[str, tuple[str, ...]], Coalescer[str, None, None]] = {}

    async def authorize(self, key: str, amount: int, currency: str, token: str) -> Authorization:
        # A first attempt's answer is known up front: it is booked by the same
        # statement that books the attempt. A row left NEW by a hiccup is
        # decided anew by the next attempt, from its attempt count.
        status = self._first_answer(token, 0)
        row = await self._book(key, (token, amount, currency, status, self._answer_after(status)))
        if row["status"] == "NEW":
            status = self._first_answer(token, row["attempts"])
            row = await self._pool.fetchrow(
                "UPDATE payment.gateway SET status = $2, answer_at = now() + make_interval(secs => $3) "
                "WHERE idempotency_key = $1 AND status = 'NEW' RETURNING token, status, answer_at",
                key, status, self._answer_after(status),
            )
            if row is None:  # a concurrent attempt decided first: its answer
                return await self._answer(key)
        return await self._interpret(key, row)

    async def _book_many(
        self, calls: dict[str, tuple[str, int, str, str, float]]
    ) -> dict[str, asyncpg.Record]:
        keys = list(calls)
        token, amount, currency, status, after = (list(c) for c in zip(*calls.values(), strict=True))
        rows = await self._pool.fetch(
            "INSERT INTO payment.gateway (idempotency_key, token, amount, currency, status, answer_at) "
            "SELECT k, t, a, c, s, now() + make_interval(secs => d) FROM unnest("
            "$1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::float8[]) "
            "AS u(k, t, a, c, s, d) "
            "ON CONFLICT (idempotency_key) DO UPDATE SET attempts = payment.gateway.attempts + 1 "
            "RETURNING idempotency_key, token, status, attempts, answer_at",
            keys, token, amount, currency, status, after,
        )
        return {row["idempotency_key"]: row for row in rows}

    def _first_answer(self, token: str, attempts: int) -> str:
        if token == "tok_flaky" and attempts < 2:
            return "RETRY_NEW"
        if token in _DECLINES:
            return "DECLINED"
        if token == "tok_timeout":
            return "PENDING"
        return "AUTHORIZED"

    def _answer_after(self, status: str) -> float:
        return self._late if status == "PENDING" else 0.0

    async def _answer(self, key: str) -> Authorization:
        row = await self._pool.fetchrow(
            "SELECT token, status, answer_at FROM payment.gateway WHERE idempotency_key = $1", key
        )
        assert row is not None
        return await self._interpret(key, row)

    async def _interpret(self, key: str, row: asyncpg.Record) -> Authorization:
        status = row["status"]
        if status == "RETRY_NEW":
            await self._pool.execute(
                "UPDATE payment.gateway SET status = 'NEW' WHERE idempotency_key = $1", key
            )
            raise GatewayUnavailable(f"gateway hiccup on {key} (transient, try again)")
        if status == "DECLINED":
            return Declined(_DECLINES.get(row["token"], "The card was declined."))
        if status == "PENDING":
            return Pending(row["answer_at"])
        return Approved(f"auth_{key[-24:]}")

    async def void(self, key: str) -> None:
        await self._set(key, "VOIDED", ("AUTHORIZED", "PENDING"))

    async def capture(self, key: str) -> None:
        await self._set(key, "CAPTURED", ("AUTHORIZED",))

    async def refund(self, key: str) -> None:
        await self._set(key, "REFUNDED", ("CAPTURED",))

    async def _set(self, key: str, status: str, from_: tuple[str, ...]) -> None:
        move = self._moves.get((status, from_))
        if move is None:
            move = self._moves[(status, from_)] = Coalescer(partial(self._set_many, status, from_))
        await move(key, None)

    async def _set_many(self, status: str, from_: tuple[str, ...], keys: dict[str, None]) -> dict[str, None]:
        await self._pool.execute(
            "UPDATE payment.gateway SET status = $2 WHERE idempotency_key = ANY($1::text[]) "
            "AND status = ANY($3::text[])",
            list(keys), status, list(from_),
        )
        return dict.fromkeys(keys)

    async def answered_late(self, limit: int) -> list[str]:
        """Authorizations that were pending and whose late answer is now due."""
        rows = await self._pool.fetch(
            """
            WITH due AS (
                SELECT idempotency_key FROM payment.gateway
                WHERE status = 'PENDING' AND answer_at <= now()
                ORDER BY answer_at LIMIT $1 FOR UPDATE SKIP LOCKED
            )
            UPDATE payment.gateway g SET status = 'AUTHORIZED'
            FROM due WHERE g.idempotency_key = due.idempotency_key
            RETURNING g.idempotency_key
            """,
            limit,
        )
        return [r["idempotency_key"] for r in rows]
