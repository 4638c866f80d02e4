"""The promo usage gate (real Redis) and the usage ledger (real PostgreSQL)
together, through the promotions handlers, without Kafka: a use is taken once
per session, the last use is never taken twice, and a gate that lost its data
or drifted is corrected from the ledger, never trusted over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio
from helpers import uid

from messaging.db import create_pool, migrate
from messaging.errors import TransientError
from schemas.contract import LineItem
from schemas.internal import ApplyPromo, CommandReply, ReleasePromo
from schemas.limits import MAX_AMOUNT
from services.promotions import schema, store
from services.promotions.handlers import PromotionHandlers
from services.promotions.redis_gate import RedisUsageGate, keys
from services.promotions.rules import Promo


class Promos:
    def __init__(self, pool: asyncpg.Pool, client: redis.asyncio.Redis) -> None:
        self.pool, self.client = pool, client
        self.handlers = PromotionHandlers(RedisUsageGate(client, grace_seconds=5.0))

    async def create(self, max_uses: int, percent_off: int = 10,
                     amount_off: int | None = None) -> str:
        code = uid("PROMO").upper()
        promo = (Promo(code, max_uses, amount_off=amount_off) if amount_off is not None
                 else Promo(code, max_uses, percent_off=percent_off))
        async with self.pool.acquire() as conn:
            assert await store.create(conn, promo)
        return code

    async def apply(self, code: str, session: str, crash: bool = False,
                    items: list[LineItem] | None = None) -> CommandReply:
        cmd = ApplyPromo(checkout_session_id=session, promo_code=code,
                         items=items or [LineItem(sku="SKU-1", quantity=1, unit_price=1000)])
        for _attempt in range(20):
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        outcome = await self.handlers.apply(conn, cmd)
                        if crash:  # the worker dies before the commit
                            raise _Crash()
                except _Crash:
                    pass
                except TransientError:
                    # What the consumer loop does: roll back, run it again.
                    await asyncio.sleep(0.01)
                    continue
            assert outcome.reply is not None
            return outcome.reply
        raise AssertionError(f"apply for {session} kept failing transiently")

    async def release(self, code: str, session: str) -> None:
        cmd = ReleasePromo(checkout_session_id=session, promo_code=code)
        async with self.pool.acquire() as conn, conn.transaction():
            await self.handlers.release(conn, cmd)

    async def ledger(self, code: str) -> int:
        async with self.pool.acquire() as conn:
            row = await store.show(conn, code)
        assert row is not None
        return int(row["used"])

    async def gate(self, code: str) -> tuple[int | None, set[str]]:
        uses_key, holders_key = keys(code)
        uses = await self.client.get(uses_key)
        holders = {h.decode() for h in await self.client.zrange(holders_key, 0, -1)}
        return (None if uses is None else int(uses)), holders


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def urls(stack) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    yield stack.env["DATABASE_URL"], stack.env["REDIS_URL"]


@pytest.fixture
async def promos(urls: tuple[str, str]) -> AsyncIterator[Promos]:
    pool = await create_pool(urls[0], 12)
    client = redis.asyncio.from_url(urls[1])
    try:
        await migrate(pool, schema.SCHEMA, schema.DDL)
        yield Promos(pool, client)
    finally:
        await client.aclose()
        await pool.close()


async def test_a_session_takes_one_use_however_often_it_applies(promos: Promos) -> None:
    code = await promos.create(max_uses=2)
    first = await promos.apply(code, "s1")
    again = await promos.apply(code, "s1")
    assert first.ok and again.ok and first.data == again.data == {"discount": 100, "total": 900}
    assert (await promos.apply(code, "s2")).ok
    third = await promos.apply(code, "s3")
    assert (third.ok, third.reason) == (False, "PROMO_EXHAUSTED")
    assert await promos.ledger(code) == 2
    assert await promos.gate(code) == (2, {"s1", "s2"})


async def test_a_crashed_apply_is_redelivered_without_taking_a_second_use(promos: Promos) -> None:
    code = await promos.create(max_uses=2)
    await promos.apply(code, "s1", crash=True)  # the gate admitted it, the ledger never saw it
    assert await promos.ledger(code) == 0
    assert (await promos.apply(code, "s1")).ok  # the redelivery
    assert (await promos.apply(code, "s2")).ok
    assert not (await promos.apply(code, "s3")).ok
    assert await promos.ledger(code) == 2


async def test_a_release_gives_the_use_back_to_gate_and_ledger(promos: Promos) -> None:
    code = await promos.create(max_uses=1)
    assert (await promos.apply(code, "s1")).ok
    assert not (await promos.apply(code, "s2")).ok
    await promos.release(code, "s1")
    await promos.release(code, "s1")  # a compensation is idempotent
    assert await promos.ledger(code) == 0 and await promos.gate(code) == (0, set())
    assert (await promos.apply(code, "s2")).ok


async def test_a_gate_that_lost_its_data_is_rebuilt_from_the_ledger(promos: Promos) -> None:
    code = await promos.create(max_uses=5)
    for s in ("s1", "s2", "s3"):
        assert (await promos.apply(code, s)).ok
    await promos.client.delete(*keys(code))  # what a Redis restart does
    replies = [await promos.apply(code, s) for s in ("s4", "s5", "s6", "s1")]
    assert [r.ok for r in replies] == [True, True, False, True]  # s1 still holds its use
    assert await promos.ledger(code) == 5
    assert await promos.gate(code) == (5, {"s1", "s2", "s3", "s4", "s5"})


async def test_a_stale_holder_in_the_gate_does_not_block_the_last_use(promos: Promos) -> None:
    code = await promos.create(max_uses=1)
    uses_key, holders_key = keys(code)
    # The gate counts a session the ledger does not know, admitted long ago
    # (its release was lost): the gate is full, the ledger is not.
    await promos.client.set(uses_key, 1)
    await promos.client.zadd(holders_key, {"ghost": 1.0})
    assert (await promos.apply(code, "s1")).ok
    assert await promos.gate(code) == (1, {"s1"})


async def test_a_gate_behind_the_ledger_is_refused_by_the_ledger(promos: Promos) -> None:
    code = await promos.create(max_uses=1)
    assert (await promos.apply(code, "s1")).ok
    uses_key, holders_key = keys(code)
    await promos.client.set(uses_key, 0)  # the gate forgot s1
    await promos.client.zrem(holders_key, "s1")
    refused = await promos.apply(code, "s2")
    assert (refused.ok, refused.reason) == (False, "PROMO_EXHAUSTED")
    assert await promos.ledger(code) == 1
    assert await promos.gate(code) == (1, {"s1"})  # reconciled from the ledger


async def test_concurrent_applies_with_the_gate_wiped_midway_take_exactly_max_uses(
    promos: Promos,
) -> None:
    code = await promos.create(max_uses=50)
    sessions = [f"s{i}" for i in range(300)]

    async def wipe() -> None:
        await asyncio.sleep(0.05)
        await promos.client.delete(*keys(code))

    replies, _ = await asyncio.gather(
        asyncio.gather(*(promos.apply(code, s) for s in sessions)), wipe()
    )
    assert sum(r.ok for r in replies) == 50
    assert {r.reason for r in replies if not r.ok} == {"PROMO_EXHAUSTED"}
    assert await promos.ledger(code) == 50
    # Afterwards the gate agrees with the ledger again (or rebuilds on next use).
    await promos.apply(code, "late")
    async with promos.pool.acquire() as conn:
        holders = set(await store.holders(conn, code))
    assert await promos.gate(code) == (50, holders)


# --- amounts at the edge of a bigint, and errors after the gate said yes --------


@pytest.mark.parametrize(("percent_off", "amount_off", "discount"), [
    (99, None, MAX_AMOUNT * 99 // 100),
    (100, None, MAX_AMOUNT),
    (None, MAX_AMOUNT, MAX_AMOUNT),
])
async def test_the_largest_cart_is_priced_and_its_discount_recorded(
    promos: Promos, percent_off: int | None, amount_off: int | None, discount: int
) -> None:
    code = await promos.create(max_uses=1, percent_off=percent_off or 10, amount_off=amount_off)
    # Two lines adding up to exactly 2^63 - 1, the largest subtotal the intake accepts.
    half = MAX_AMOUNT // 2
    items = [LineItem(sku="A", quantity=1, unit_price=half),
             LineItem(sku="B", quantity=1, unit_price=MAX_AMOUNT - half)]
    reply = await promos.apply(code, "edge", items=items)
    assert reply.ok and reply.data == {"discount": discount, "total": MAX_AMOUNT - discount}
    async with promos.pool.acquire() as conn:
        recorded = await conn.fetchval(
            "SELECT discount FROM promotions.usages WHERE checkout_session_id = 'edge' "
            "AND code = $1", code)
    assert recorded == discount


async def test_a_cart_past_a_bigint_that_slipped_past_the_intake_takes_no_use(
    promos: Promos,
) -> None:
    """Defence in depth: a command built without validation (model_construct)
    carrying the issue's cart. Once its discount overflowed a bigint in the
    ledger INSERT, after the gate had admitted the session."""
    code = await promos.create(max_uses=5)
    items = [LineItem.model_construct(sku="SKU-1", quantity=3, unit_price=10**20)]
    cmd = ApplyPromo.model_construct(checkout_session_id="huge", attempt=1, promo_code=code,
                                     items=items)
    async with promos.pool.acquire() as conn, conn.transaction():
        outcome = await promos.handlers.apply(conn, cmd)
    assert outcome.reply is not None
    assert (outcome.reply.ok, outcome.reply.reason) == (False, "INVALID_REQUEST")
    assert await promos.ledger(code) == 0
    assert "huge" not in (await promos.gate(code))[1]


async def test_an_error_after_the_gate_admitted_gives_the_use_back(promos: Promos) -> None:
    """A real PostgreSQL failure between the gate's yes and the ledger row: the
    code's row is locked by another transaction and the apply gives up waiting.
    The transaction rolls back, so the gate must not keep the session either."""
    code = await promos.create(max_uses=1)
    cmd = ApplyPromo(checkout_session_id="stuck", promo_code=code,
                     items=[LineItem(sku="SKU-1", quantity=1, unit_price=1000)])
    async with promos.pool.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM promotions.codes WHERE code = $1 FOR UPDATE", code)
        async with promos.pool.acquire() as conn:
            with pytest.raises(asyncpg.LockNotAvailableError):
                async with conn.transaction():
                    await conn.execute("SET LOCAL lock_timeout = '200ms'")
                    await promos.handlers.apply(conn, cmd)
        assert await promos.gate(code) == (0, set())  # no holder left behind
    assert await promos.ledger(code) == 0
    # The redelivery takes the one use, and a second session is refused.
    assert (await promos.apply(code, "stuck")).ok
    assert not (await promos.apply(code, "other")).ok
    assert await promos.gate(code) == (1, {"stuck"})
