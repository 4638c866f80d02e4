"""The inventory's timer jobs (role ``timers``): the hold sweeper and the
reconcile of hot counters. Both are safe to run in many processes at once."""

from __future__ import annotations

import logging

import asyncpg

from messaging.errors import is_transient
from services.inventory import store
from services.inventory.gate import StockGate
from services.inventory.hot import HoldState, HotConfig, Reconciliation, reconcile

log = logging.getLogger(__name__)


async def sweep_holds(pool: asyncpg.Pool, gate: StockGate | None = None, batch: int = 500) -> int:
    """Expire every due hold, one batch per transaction; returns how many.

    A batch's units go back to the hot counters after its transaction commits;
    if Redis is away then, the reconcile gives them back later (the holders
    stay in Redis until it does), so PostgreSQL's sweep never waits on Redis.
    """
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            expired = await store.expire_due(conn, batch)
        total += len(expired)
        if gate is not None and expired:
            try:
                await gate.give_back([(session, sku) for session, sku, _ in expired])
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("hold sweeper: Redis give-back deferred to the reconcile: %s", exc)
        if len(expired) < batch:
            return total


async def reconcile_hot(
    pool: asyncpg.Pool, gate: StockGate, config: HotConfig = HotConfig()
) -> list[Reconciliation]:
    """Compare every hot counter with PostgreSQL and correct the drift.

    PostgreSQL is the record: a missing counter is rebuilt from it, and a
    counter that disagrees is moved to what PostgreSQL implies (``available``
    less the units of holders still in flight), but only if nothing touched
    the counter while PostgreSQL was read (a version check in Redis); a busy
    SKU is tried again next round. Every correction is logged.
    """
    results: list[Reconciliation] = []
    async with pool.acquire() as conn:
        for sku in await store.hot_skus(conn):
            snapshot, now = await gate.snapshot(sku)
            if snapshot.counter is None:
                found = await store.available(conn, [sku])
                if await gate.rebuild(found):
                    log.warning("hot SKU %s: counter missing in Redis, rebuilt from PostgreSQL (%s)",
                                sku, found.get(sku))
                continue
            books = await store.books_for_reconcile(
                conn, sku, [h.session_id for h in snapshot.holders])
            if books is None:
                continue
            available, rows = books
            holds = {s: HoldState(status, ended.timestamp() if ended else None)
                     for s, (status, ended) in rows.items()}
            result = reconcile(sku, snapshot, available, holds, now, config)
            await _apply(gate, snapshot.version, result)
            results.append(result)
    return results


async def _apply(gate: StockGate, version: int, result: Reconciliation) -> None:
    sku = result.sku
    if result.drift:
        if await gate.correct(sku, version, result.drift):
            log.warning(
                "hot SKU %s: Redis counter drifted: it said %d, PostgreSQL implies %d "
                "(%d units in flight); corrected by %+d",
                sku, result.counter, result.expected, result.pending, result.drift,
            )
        else:
            log.info("hot SKU %s: counter moved while reconciling; next round", sku)
    if result.give_back:
        back = await gate.give_back([(session, sku) for session in result.give_back])
        log.warning("hot SKU %s: gave back %d unit(s) of %d ended or orphaned holder(s)",
                    sku, back, len(result.give_back))
    for session in result.forget:
        await gate.forget(session, [sku])
