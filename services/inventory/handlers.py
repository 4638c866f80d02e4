"""Inventory command handlers: reserve, release and commit a cart's hold,
and restock a cancelled order; hot SKUs pass the Redis gate first."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import asyncpg

from messaging.errors import TransientError, is_transient
from messaging.service import Outcome, Route, failed, ok
from messaging.topics import ORDERS_REPLIES
from schemas.contract import LineItem
from schemas.internal import Command, CommitStock, ReleaseStock, ReserveStock, RestockOrder
from services.inventory import store
from services.inventory.gate import StockGate
from services.inventory.hot import Admission, GateAnswer, HotConfig, newly_hot, split_hot
from services.inventory.rules import Line, check_cart, in_sku_order, out_of_stock

log = logging.getLogger(__name__)


def lines_of(items: list[LineItem]) -> list[Line]:
    return [Line(i.sku, i.quantity, i.unit_price) for i in items]


class InventoryHandlers:
    """The inventory service's commands. ``gate`` is the hot-SKU gate in Redis
    (None: every line goes straight to PostgreSQL, which alone is still correct)."""

    def __init__(self, gate: StockGate | None = None, config: HotConfig = HotConfig()) -> None:
        self._gate = gate
        self.config = config

    @property
    def gated(self) -> bool:
        """Whether hot SKUs pass the Redis gate (else every line is a cold one)."""
        return self._gate is not None

    async def reserve_stock(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        """Hold every line or none. Hot lines pass the Redis gate first: a cart
        it refuses is answered OUT_OF_STOCK without a stock row being touched."""
        assert isinstance(cmd, ReserveStock)
        session = cmd.checkout_session_id
        lines = lines_of(cmd.items)
        skus = [line.sku for line in lines]
        catalogue = await store.catalogue(conn, skus)
        rejection = check_cart(lines, {sku: price for sku, (price, _) in catalogue.items()})
        if rejection is not None:
            return Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))
        hot, cold = split_hot(lines, {sku: flag for sku, (_, flag) in catalogue.items()})
        if self._gate is None:
            hot, cold = [], in_sku_order(lines)
        if hot:
            answer = await self._admit(conn, session, hot)
            if answer.admission is Admission.SHORT:
                refused = out_of_stock(lines, {**{c.sku: c.quantity for c in cold}, **answer.left})
                return Outcome(failed(cmd, refused.reason, refused.detail, refused.skus))
        mark_hot = await self.rate(cold)
        try:
            async with conn.transaction():  # savepoint: all lines or none
                if not await store.take(conn, lines, into="held", mark_hot=mark_hot):
                    raise _Short()
                expires = await store.add_holds(conn, session, lines, cmd.hold_ttl_seconds)
        except _Short:
            if hot:  # PostgreSQL said no after Redis said yes: the units go back
                await self._give_back(session, [line.sku for line in hot])
            rejection = out_of_stock(lines, await store.available(conn, skus))
            return Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))
        if mark_hot:
            log.warning("SKU(s) %s crossed %d reservations in %gs: marked hot", sorted(mark_hot),
                        self.config.threshold, self.config.window_seconds)
        return Outcome(ok(cmd, hold_expires_at=expires.isoformat()))

    async def release_stock(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        """Ends whatever the session holds now; idempotent by state, so it runs
        again on every delivery (no inbox): a ReleaseStock re-sent because a
        ReserveStock landed after the first one releases the hold it made."""
        assert isinstance(cmd, ReleaseStock)
        held = await store.end_holds(conn, cmd.checkout_session_id, "RELEASED")
        await store.move_held(conn, held, "available")
        # Only a hot SKU can have holders (turning a SKU off drops them).
        await self._give_back(cmd.checkout_session_id, sorted(await self._hot_among(conn, held)))
        return Outcome(ok(cmd, released=held))

    async def commit_stock(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        """Turn the hold into a sale. A line whose hold expired during payment is
        taken anew if stock is there (through the gate when hot), else the
        commit fails OUT_OF_STOCK and the saga voids the payment."""
        assert isinstance(cmd, CommitStock)
        session = cmd.checkout_session_id
        lines = lines_of(cmd.items)
        left: dict[str, int] = {}
        try:
            async with conn.transaction():
                held = await store.end_holds(conn, session, "COMMITTED")
                regained = [Line(line.sku, line.quantity - held.get(line.sku, 0), line.unit_price)
                            for line in lines if held.get(line.sku, 0) < line.quantity]
                hot_skus = await self._hot_among(conn, [line.sku for line in lines])
                hot = [line for line in in_sku_order(regained) if line.sku in hot_skus]
                if hot:
                    answer = await self._admit(conn, session, hot)
                    if answer.admission is Admission.SHORT:
                        left = dict(answer.left)
                        raise _Short()
                if not await store.settle(conn, held, lines):
                    await self._give_back(session, [line.sku for line in hot])
                    raise _Short()
                if self._gate is not None and hot_skus:  # the gate's units are sold now
                    await self._gate.forget(session, sorted(hot_skus))
                return Outcome(ok(cmd, rehold=[line.sku for line in regained]))
        except _Short:
            available = await store.available(conn, [line.sku for line in lines])
            rejection = out_of_stock(lines, {**available, **left})
            detail = ("The hold expired during payment and "
                      + rejection.detail[0].lower() + rejection.detail[1:])
            return Outcome(failed(cmd, "OUT_OF_STOCK", detail, rejection.skus))

    # ---- the gate ------------------------------------------------------------

    async def _admit(self, conn: asyncpg.Connection, session: str, hot: list[Line]) -> GateAnswer:
        """The Lua check-and-decrement; a missing counter (Redis emptied or
        restarted) is rebuilt from PostgreSQL's ``available`` and tried again."""
        assert self._gate is not None
        for _ in range(3):
            answer = await self._gate.admit(session, hot)
            if answer.admission is not Admission.MISSING:
                return answer
            found = await store.available(conn, list(answer.missing))
            if await self._gate.rebuild(found):
                log.warning("hot counter(s) missing in Redis, rebuilt from PostgreSQL: %s", found)
        raise TransientError(f"hot counters for {[line.sku for line in hot]} keep vanishing")

    async def _give_back(self, session: str, skus: list[str]) -> None:
        if self._gate is not None and skus:
            await self._gate.give_back([(session, sku) for sku in skus])

    async def rate(self, cold: list[Line]) -> set[str]:
        """Count this reservation per cold SKU; the SKUs that just turned hot."""
        if self._gate is None or not cold or self.config.threshold <= 0:
            return set()
        try:
            counts = await self._gate.count_reservations(
                [line.sku for line in cold], self.config.window_seconds)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Cold carts must not wait for Redis: detection just misses this one.
            log.debug("reservation rate not counted (Redis away): %s", exc)
            return set()
        return newly_hot(counts, self.config)

    async def _hot_among(self, conn: asyncpg.Connection, skus: Iterable[str]) -> set[str]:
        wanted = sorted(set(skus))
        if self._gate is None or not wanted:
            return set()
        return await store.hot_among(conn, wanted)

    async def restock_order(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        """A cancelled or returned order's units go back on sale (sold -> available)."""
        assert isinstance(cmd, RestockOrder)
        restocked = await store.put_back(conn, lines_of(cmd.items))
        missing = sorted({i.sku for i in cmd.items} - restocked.keys())
        if missing:  # the books moved under us (an operator); say so, never go negative
            log.warning("restock of order %s: no sold units left for %s", cmd.order_id, missing)
        hot = await self._hot_among(conn, restocked)
        if self._gate is not None and hot:  # hot counters get the units too
            await self._gate.put_back({sku: restocked[sku] for sku in hot})
        return Outcome(ok(cmd, restocked=restocked, not_restocked=missing))

    async def prelock(self, conn: asyncpg.Connection, commands: Sequence[Command]) -> None:
        """A lane's stock rows, locked up front in SKU order."""
        skus = sorted({item.sku for c in commands for item in getattr(c, "items", ())})
        sessions = [c.checkout_session_id for c in commands
                    if isinstance(c, (ReleaseStock, CommitStock))]
        await store.lock_products(conn, skus, sessions)

    def routes(self) -> Mapping[type[Command], Route]:
        return {
            ReserveStock: Route(self.reserve_stock),
            ReleaseStock: Route(self.release_stock, dedupe=False),
            CommitStock: Route(self.commit_stock),
            RestockOrder: Route(self.restock_order, reply_topic=ORDERS_REPLIES),
        }


class _Short(Exception):
    """A line was short of stock: roll the savepoint back."""
