"""The simulated gateway on the real PostgreSQL, called the way a payment lane
calls it: many calls at once, which it books in one statement per batch. Each
call must still get its own token's answer, and the books must read as if the
calls had come one by one (one row per key, the same key never twice)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from checkout_saga.runtime import DDL
from messaging.db import create_pool, migrate
from services.payment.gateway import (
    Approved,
    Declined,
    GatewayUnavailable,
    Pending,
    SimulatedGateway,
)


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 4)
    await migrate(p, "payment", DDL["payment"])
    yield p
    await p.close()


async def books(pool: asyncpg.Pool) -> dict[str, tuple[str, int]]:
    rows = await pool.fetch("SELECT idempotency_key, status, attempts FROM payment.gateway")
    return {r["idempotency_key"]: (r["status"], r["attempts"]) for r in rows}


async def test_calls_made_together_get_their_own_tokens_answers(pool: asyncpg.Pool) -> None:
    gateway = SimulatedGateway(pool, late_answer_after=60.0)
    tokens = ["tok_visa", "tok_chargeDeclined", "tok_insufficientFunds", "tok_timeout"] * 10
    answers = await asyncio.gather(
        *(gateway.authorize(f"pay:{i}", 100 + i, "USD", token) for i, token in enumerate(tokens))
    )
    for i, (token, answer) in enumerate(zip(tokens, answers, strict=True)):
        if token == "tok_visa":
            assert answer == Approved(f"auth_pay:{i}")
        elif token == "tok_timeout":
            assert isinstance(answer, Pending)
        else:
            assert isinstance(answer, Declined)
            assert ("insufficient funds" in answer.detail) == (token == "tok_insufficientFunds")
    expected = {"tok_visa": "AUTHORIZED", "tok_chargeDeclined": "DECLINED",
                "tok_insufficientFunds": "DECLINED", "tok_timeout": "PENDING"}
    assert await books(pool) == {f"pay:{i}": (expected[t], 0) for i, t in enumerate(tokens)}
    amounts = await pool.fetch("SELECT idempotency_key, amount FROM payment.gateway")
    assert {r["idempotency_key"]: r["amount"] for r in amounts} == {
        f"pay:{i}": 100 + i for i in range(len(tokens))}


async def test_one_key_twice_at_once_authorizes_once(pool: asyncpg.Pool) -> None:
    gateway = SimulatedGateway(pool, late_answer_after=60.0)
    first, second, other = await asyncio.gather(
        gateway.authorize("pay:dup", 500, "USD", "tok_visa"),
        gateway.authorize("pay:dup", 500, "USD", "tok_visa"),
        gateway.authorize("pay:other", 700, "USD", "tok_visa"),
    )
    assert first == second == Approved("auth_pay:dup")
    assert other == Approved("auth_pay:other")
    assert await books(pool) == {"pay:dup": ("AUTHORIZED", 1), "pay:other": ("AUTHORIZED", 0)}


async def test_a_flaky_card_among_others_fails_alone_then_succeeds(pool: asyncpg.Pool) -> None:
    gateway = SimulatedGateway(pool, late_answer_after=60.0)
    flaky, fine = await asyncio.gather(
        gateway.authorize("pay:flaky", 100, "USD", "tok_flaky"),
        gateway.authorize("pay:fine", 100, "USD", "tok_visa"),
        return_exceptions=True,
    )
    assert isinstance(flaky, GatewayUnavailable)
    assert fine == Approved("auth_pay:fine")
    with pytest.raises(GatewayUnavailable):
        await gateway.authorize("pay:flaky", 100, "USD", "tok_flaky")
    assert await gateway.authorize("pay:flaky", 100, "USD", "tok_flaky") == Approved("auth_pay:flaky")
    assert (await books(pool))["pay:flaky"] == ("AUTHORIZED", 2)


async def test_captures_made_together_move_only_authorizations(pool: asyncpg.Pool) -> None:
    gateway = SimulatedGateway(pool, late_answer_after=60.0)
    await asyncio.gather(
        gateway.authorize("pay:a", 100, "USD", "tok_visa"),
        gateway.authorize("pay:b", 100, "USD", "tok_visa"),
        gateway.authorize("pay:d", 100, "USD", "tok_chargeDeclined"),
    )
    await gateway.void("pay:b")
    await asyncio.gather(*(gateway.capture(k) for k in ("pay:a", "pay:b", "pay:d", "pay:a")))
    await asyncio.gather(gateway.void("pay:a"), gateway.refund("pay:b"))  # neither applies
    assert {k: s for k, (s, _) in (await books(pool)).items()} == {
        "pay:a": "CAPTURED", "pay:b": "VOIDED", "pay:d": "DECLINED"}
    await gateway.refund("pay:a")
    assert (await books(pool))["pay:a"] == ("REFUNDED", 0)
