"""ReserveStock and CommitStock for many checkout sessions at once.

The rules are those of ``handlers`` (all lines or none, prices as shown, the
hot-SKU gate); what changes is the cost: the lane's stock rows are read once
(locked, in SKU order, by ``InventoryHandlers.prelock``), the carts are
decided in memory against those counts, and one statement moves the counters
and writes the holds for every cart. A cart the fast path does not cover (a
hot SKU behind the Redis gate, a SKU twice in one cart, a hold that lapsed)
goes through the one-command handler in the same transaction, before the
others: between different sessions a lane keeps no order (Kafka keeps none
across partitions either), only all-or-nothing per cart and never oversold.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import timedelta

import asyncpg

from messaging.service import Outcome, Route, failed, ok
from schemas.internal import Command, CommitStock, ReserveStock
from services.inventory import store
from services.inventory.handlers import InventoryHandlers, lines_of
from services.inventory.rules import check_cart, out_of_stock

log = logging.getLogger(__name__)


class InventoryLane:
    def __init__(self, handlers: InventoryHandlers) -> None:
        self._handlers = handlers

    async def reserve(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        carts = [c for c in cmds if isinstance(c, ReserveStock)]
        assert len(carts) == len(cmds)
        lines = [lines_of(c.items) for c in carts]
        skus = sorted({line.sku for cart in lines for line in cart})
        books = await store.books(conn, skus)
        gated = self._handlers.gated
        outcomes: list[Outcome | None] = [None] * len(carts)
        alone = []
        for i, cmd in enumerate(carts):
            rejection = check_cart(lines[i], {sku: b["price"] for sku, b in books.items()})
            if rejection is not None:
                outcomes[i] = Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))
            elif (len({line.sku for line in lines[i]}) < len(lines[i])
                  or gated and any(books[line.sku]["hot"] for line in lines[i])):
                alone.append(i)
        for i in alone:  # first: they move counters the fast path then reads
            outcomes[i] = await self._handlers.reserve_stock(conn, carts[i])
        if alone:
            books = await store.books(conn, skus)
        fast = [i for i, o in enumerate(outcomes) if o is None]
        mark_hot = await self._handlers.rate([line for i in fast for line in lines[i]])
        available = {sku: b["available"] for sku, b in books.items()}
        taken: dict[str, int] = {}
        holds: list[tuple[str, str, int, float]] = []
        held: list[int] = []
        for i in fast:
            cmd, cart = carts[i], lines[i]
            if any(available[line.sku] < line.quantity for line in cart):
                rejection = out_of_stock(cart, available)
                outcomes[i] = Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))
                continue
            for line in cart:
                available[line.sku] -= line.quantity
                taken[line.sku] = taken.get(line.sku, 0) + line.quantity
                holds.append((cmd.checkout_session_id, line.sku, line.quantity,
                              float(cmd.hold_ttl_seconds)))
            held.append(i)
        # The holds expire on PostgreSQL's clock: the statement's now() plus their TTL.
        now = await store.take_and_hold(conn, taken, mark_hot, holds)
        for i in held:
            assert now is not None
            expires = now + timedelta(seconds=carts[i].hold_ttl_seconds)
            outcomes[i] = Outcome(ok(carts[i], hold_expires_at=expires.isoformat()))
        if mark_hot & taken.keys():
            log.warning("SKU(s) %s crossed %d reservations in %gs: marked hot",
                        sorted(mark_hot & taken.keys()), self._handlers.config.threshold,
                        self._handlers.config.window_seconds)
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    async def commit(self, conn: asyncpg.Connection, cmds: list[Command]) -> list[Outcome]:
        carts = [c for c in cmds if isinstance(c, CommitStock)]
        assert len(carts) == len(cmds)
        held = await store.active_holds(conn, [c.checkout_session_id for c in carts])
        skus = sorted({item.sku for c in carts for item in c.items})
        hot = await store.hot_among(conn, skus) if self._handlers.gated and skus else set()
        outcomes: list[Outcome | None] = [None] * len(carts)
        fast = []
        for i, cmd in enumerate(carts):
            want = {line.sku: line.quantity for line in lines_of(cmd.items)}
            if (len(want) == len(cmd.items) and held.get(cmd.checkout_session_id) == want
                    and not hot & want.keys()):
                fast.append(cmd.checkout_session_id)
                outcomes[i] = Outcome(ok(cmd, rehold=[]))
            else:  # a lapsed or odd hold, or a hot SKU: the careful path
                outcomes[i] = await self._handlers.commit_stock(conn, cmd)
        await store.sell_held(conn, fast, sum(len(held[s]) for s in fast))
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]


def routes(handlers: InventoryHandlers) -> Mapping[type[Command], Route]:
    """The inventory service's routes: ``handlers.routes()`` with the lane versions attached."""
    lane = InventoryLane(handlers)
    single = handlers.routes()
    return {
        **single,
        ReserveStock: dataclasses.replace(single[ReserveStock], many=lane.reserve),
        CommitStock: dataclasses.replace(single[CommitStock], many=lane.commit),
    }

