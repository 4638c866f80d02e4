"""Inventory command handlers: reserve, release and commit a cart's hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Mapping

import asyncpg

from checkout_saga.service import Outcome, Route, failed, ok
from schemas.contract import LineItem
from schemas.internal import Command, CommitStock, ReleaseStock, ReserveStock
from services.inventory import store
from services.inventory.rules import Line, check_cart, out_of_stock


def _lines(items: list[LineItem]) -> list[Line]:
    return [Line(i.sku, i.quantity, i.unit_price) for i in items]


async def reserve_stock(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    assert isinstance(cmd, ReserveStock)
    lines = _lines(cmd.items)
    skus = [line.sku for line in lines]
    rejection = check_cart(lines, await store.prices(conn, skus))
    if rejection is None:
        try:
            async with conn.transaction():  # savepoint: all lines or none
                if not await store.take(conn, lines, into="held"):
                    raise _Short()
                expires = datetime.now(UTC) + timedelta(seconds=cmd.hold_ttl_seconds)
                await store.add_holds(conn, cmd.checkout_session_id, lines, expires)
                return Outcome(ok(cmd, hold_expires_at=expires.isoformat()))
        except _Short:
            rejection = out_of_stock(lines, await store.available(conn, skus))
    return Outcome(failed(cmd, rejection.reason, rejection.detail, rejection.skus))


async def release_stock(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    assert isinstance(cmd, ReleaseStock)
    held = await store.end_holds(conn, cmd.checkout_session_id, "RELEASED")
    await store.move_held(conn, held, "available")
    return Outcome(ok(cmd, released=held))


async def commit_stock(conn: asyncpg.Connection, cmd: Command) -> Outcome:
    """Turn the hold into a sale; re-take stock for lines whose hold expired."""
    assert isinstance(cmd, CommitStock)
    lines = _lines(cmd.items)
    try:
        async with conn.transaction():
            held = await store.end_holds(conn, cmd.checkout_session_id, "COMMITTED")
            await store.move_held(conn, held, "sold")
            lapsed = [line for line in lines if held.get(line.sku, 0) < line.quantity]
            regained = [
                Line(line.sku, line.quantity - held.get(line.sku, 0), line.unit_price)
                for line in lapsed
            ]
            if regained and not await store.take(conn, regained, into="sold"):
                raise _Short()
            return Outcome(ok(cmd, rehold=[line.sku for line in lapsed]))
    except _Short:
        rejection = out_of_stock(lines, await store.available(conn, [line.sku for line in lines]))
        detail = "The hold expired during payment and " + rejection.detail[0].lower() + rejection.detail[1:]
        return Outcome(failed(cmd, "OUT_OF_STOCK", detail, rejection.skus))


class _Short(Exception):
    """A line was short of stock: roll the savepoint back."""


ROUTES: Mapping[type[Command], Route] = {
    ReserveStock: Route(reserve_stock),
    ReleaseStock: Route(release_stock),
    CommitStock: Route(commit_stock),
}
