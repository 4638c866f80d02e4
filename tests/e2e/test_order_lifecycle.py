"""The order's life after checkout, through the contract's topics and the CLI:
shipment, delivery, return, cancel (a small saga of its own), refusals, bad
input, and a cancel racing a shipment for the same order 100 times.

Money and stock are read straight from PostgreSQL (read only): the contract
has no operator command for a payment, and 100 `stock show` calls would cost
a minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from helpers import Bus, checkout_event, cli, cli_json, order_event, uid

RACES = 100
EVENTS = "orders.events"


def checkouts(bus: Bus, env: dict[str, str], tmp_path: Path, n: int, stock: int = 2
              ) -> list[tuple[str, str, str]]:
    """n real checkouts, one fresh SKU each (stock ``stock``, one unit bought):
    returns (session id, order id, sku) of each confirmed order."""
    skus = [uid("SKU-L") for _ in range(n)]
    csv = tmp_path / "stock.csv"
    csv.write_text("sku,price,quantity\n" + "".join(f"{s},700,{stock}\n" for s in skus))
    cli(env, "stock", "import", str(csv))
    placed: dict[str, tuple[str, str, str]] = {}
    for _ in range(3):  # a loaded machine can time a payment out (2 s in tests): go again
        todo = {uid("cs-life"): sku for sku in skus if sku not in placed}
        if not todo:
            break
        for sid, sku in todo.items():
            bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 700)]))
        bus.flush()
        results = bus.wait_for("checkout.results", list(todo), timeout=90)
        for sid, sku in todo.items():
            if results[sid] and results[sid][0]["type"] == "CheckoutSucceeded":
                placed[sku] = (sid, results[sid][0]["data"]["order_id"], sku)
    assert len(placed) == n, f"only {len(placed)} of {n} checkouts succeeded"
    return [placed[sku] for sku in skus]


def send(bus: Bus, topic: str, type_: str, order_id: str, sid: str, **extra: Any) -> str:
    event_id = extra.pop("event_id", None) or uid("ev")
    bus.send(topic, sid, order_event(type_, order_id, sid, event_id=event_id, **extra))
    return event_id


def events_until(bus: Bus, sids: list[str], done: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """orders.events by session, polled until ``done`` holds for every session."""
    wanted = set(sids)
    end = time.monotonic() + timeout
    while True:
        found: dict[str, list[dict[str, Any]]] = {s: [] for s in wanted}
        for row in bus.poll(EVENTS, 0.2):
            value = row["value"]
            if isinstance(value, dict) and value.get("subject") in wanted:
                found[value["subject"]].append(value)
        if all(done(found[s]) for s in wanted) or time.monotonic() > end:
            return found


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def has(*wanted: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: all(w in types(events) for w in wanted)


def changes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Status changes after checkout (checkout's own are PENDING -> ... -> CONFIRMED)."""
    return [(e["data"]["from"], e["data"]["to"]) for e in events
            if e["type"] == "OrderStatusChanged"
            and e["data"]["from"] not in ("PENDING", "PAYMENT_AUTHORIZED")]


def rejections(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["reason"] for e in events if e["type"] == "OrderRequestRejected"]


async def money_and_stock(env: dict[str, str], sids: list[str], skus: list[str]
                          ) -> tuple[dict[str, str], dict[str, tuple[int, int, int]]]:
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        pay = await conn.fetch("SELECT checkout_session_id, status FROM payment.payments "
                               "WHERE checkout_session_id = ANY($1::text[])", sids)
        stock = await conn.fetch("SELECT sku, available, held, sold FROM inventory.products "
                                 "WHERE sku = ANY($1::text[])", skus)
    finally:
        await conn.close()
    return ({r["checkout_session_id"]: r["status"] for r in pay},
            {r["sku"]: (r["available"], r["held"], r["sold"]) for r in stock})


async def test_ship_deliver_return_then_refund_and_restock(
    workers: Any, bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    [(sid, order_id, sku)] = checkouts(bus, env, tmp_path, 1)
    shipped_id = send(bus, "fulfillment.events", "OrderShipped", order_id, sid,
                      carrier="UPS", tracking_number="1Z999")
    bus.flush()
    events_until(bus, [sid], has("OrderShipped"))
    # the same event again (same id): a duplicate, absorbed without a trace
    send(bus, "fulfillment.events", "OrderShipped", order_id, sid, event_id=shipped_id,
         carrier="UPS", tracking_number="1Z999")
    # a second shipment under a new id: refused, and said so
    send(bus, "fulfillment.events", "OrderShipped", order_id, sid)
    send(bus, "orders.requests", "ReturnRequested", order_id, sid)  # before delivery: refused
    bus.flush()
    events_until(bus, [sid], lambda ev: len(rejections(ev)) >= 2)
    send(bus, "fulfillment.events", "OrderDelivered", order_id, sid)
    bus.flush()
    events_until(bus, [sid], has("OrderDelivered"))
    send(bus, "orders.requests", "ReturnRequested", order_id, sid, reason="too small")
    bus.flush()
    events_until(bus, [sid], has("ReturnInitiated"))
    send(bus, "fulfillment.events", "ReturnReceived", order_id, sid)
    bus.flush()
    found = events_until(bus, [sid], has("OrderReturned"))[sid]

    assert changes(found) == [("CONFIRMED", "SHIPPED"), ("SHIPPED", "DELIVERED"),
                              ("DELIVERED", "RETURN_INITIATED"), ("RETURN_INITIATED", "RETURNED")]
    # two topics: the two refusals may come in either order
    assert sorted(rejections(found)) == ["ALREADY_SHIPPED", "NOT_DELIVERED"]
    assert types(found).count("OrderShipped") == 1
    shipped = next(e for e in found if e["type"] == "OrderShipped")
    assert shipped["data"]["carrier"] == "UPS" and shipped["data"]["tracking_number"] == "1Z999"
    initiated = next(e for e in found if e["type"] == "ReturnInitiated")
    assert initiated["data"] == {"order_id": order_id, "checkout_session_id": sid,
                                 "reason": "too small"}
    assert all(e["data"]["order_id"] == order_id and e["subject"] == sid for e in found)

    pay, stock = await money_and_stock(env, [sid], [sku])
    assert pay[sid] == "REFUNDED"
    assert stock[sku] == (2, 0, 0)

    shown = cli_json(env, "order", "show", order_id)
    assert shown["order_id"] == order_id and shown["status"] == "RETURNED"
    moves = [h["to"] for h in shown["history"] if h["kind"] == "transition"]
    assert moves == ["PENDING", "PAYMENT_AUTHORIZED", "CONFIRMED", "SHIPPED", "DELIVERED",
                     "RETURN_INITIATED", "RETURNED"]
    refused = [h["reason"] for h in shown["history"] if h["kind"] == "rejected"]
    assert sorted(r.split(":")[0] for r in refused) == ["ALREADY_SHIPPED", "NOT_DELIVERED"]
    notes = " | ".join(h["reason"] for h in shown["history"] if h["kind"] == "note")
    assert "payment REFUNDED" in notes and f"{sku} x1" in notes and "return settled" in notes
    assert shown["settlement"]["kind"] == "RETURN" and shown["settlement"]["state"] == "DONE"
    text = cli(env, "order", "show", order_id).stdout
    assert "RETURNED" in text and "UPS" in text


async def test_cancel_before_shipment_gives_money_and_stock_back_then_refuses_the_shipment(
    workers: Any, bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    [(sid, order_id, sku)] = checkouts(bus, env, tmp_path, 1)
    send(bus, "orders.requests", "CancelOrderRequested", order_id, sid, reason="changed my mind")
    bus.flush()
    events_until(bus, [sid], has("OrderCancelled"))
    send(bus, "fulfillment.events", "OrderShipped", order_id, sid)  # too late: cancelled
    send(bus, "orders.requests", "CancelOrderRequested", order_id, sid)  # again
    bus.flush()
    found = events_until(bus, [sid], lambda ev: len(rejections(ev)) >= 2)[sid]

    assert changes(found) == [("CONFIRMED", "CANCELLING"), ("CANCELLING", "CANCELLED")]
    cancelled = next(e for e in found if e["type"] == "OrderCancelled")
    assert cancelled["data"] == {"order_id": order_id, "checkout_session_id": sid,
                                 "reason": "changed my mind"}
    assert rejections(found) == ["ORDER_CANCELLED", "ORDER_CANCELLED"]
    details = [e["data"]["detail"] for e in found if e["type"] == "OrderRequestRejected"]
    assert any(d.startswith(f"OrderShipped for order {order_id} ignored") and "CANCELLED" in d
               for d in details), details

    pay, stock = await money_and_stock(env, [sid], [sku])
    assert pay[sid] == "REFUNDED"  # the saga captured it at checkout
    assert stock[sku] == (2, 0, 0)
    shown = cli_json(env, "order", "show", order_id)
    assert shown["status"] == "CANCELLED"
    assert shown["settlement"]["payment_status"] == "REFUNDED"
    assert shown["settlement"]["restocked"] == {sku: 1}


async def test_requests_that_cannot_be_honoured_change_nothing(
    workers: Any, bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    (sid_a, order_a, sku_a), (sid_b, order_b, sku_b) = checkouts(bus, env, tmp_path, 2)
    send(bus, "fulfillment.events", "OrderDelivered", order_b, sid_b)  # before the shipment
    send(bus, "fulfillment.events", "ReturnReceived", order_b, sid_b)  # nothing requested
    send(bus, "orders.requests", "CancelOrderRequested", order_a, sid_b)  # wrong session
    ghost_sid = uid("cs-ghost")
    send(bus, "orders.requests", "CancelOrderRequested", uid("ord-ghost"), ghost_sid)
    send(bus, "fulfillment.events", "OrderShipped", order_a, sid_a)
    bus.flush()
    events_until(bus, [sid_a], has("OrderShipped"))
    send(bus, "orders.requests", "CancelOrderRequested", order_a, sid_a)  # after shipment
    bus.flush()
    found = {
        sid: events_until(bus, [sid], lambda ev, n=n: len(rejections(ev)) >= n)[sid]
        for sid, n in ((sid_a, 1), (sid_b, 3), (ghost_sid, 1))
    }

    assert rejections(found[sid_a]) == ["ALREADY_SHIPPED"]
    assert rejections(found[ghost_sid]) == ["UNKNOWN_ORDER"]
    assert sorted(rejections(found[sid_b])) == [
        "NOT_SHIPPED", "RETURN_NOT_REQUESTED", "UNKNOWN_ORDER"]
    assert changes(found[sid_b]) == []

    pay, stock = await money_and_stock(env, [sid_a, sid_b], [sku_a, sku_b])
    assert pay == {sid_a: "CAPTURED", sid_b: "CAPTURED"}
    assert stock[sku_a] == stock[sku_b] == (1, 0, 1)
    assert cli_json(env, "order", "show", order_a)["status"] == "SHIPPED"
    assert cli_json(env, "order", "show", order_b)["status"] == "CONFIRMED"


def test_bad_input_is_dead_lettered_and_the_partition_moves_on(
    workers: Any, bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    [(sid, order_id, _sku)] = checkouts(bus, env, tmp_path, 1)
    bus.send("orders.requests", sid, b"{not json")
    bus.send("fulfillment.events", sid,
             order_event("OrderShipped", order_id, sid, carrier=42))  # schema violation
    bus.send("fulfillment.events", sid, order_event("OrderPacked", order_id, sid))  # unknown type
    send(bus, "fulfillment.events", "OrderShipped", order_id, sid)  # then a good one
    bus.flush()
    assert has("OrderShipped")(events_until(bus, [sid], has("OrderShipped"))[sid])

    def dead(topic: str) -> list[dict[str, Any]]:
        return [r for r in bus.poll(f"{topic}.dlq", 0.5) if r["key"] == sid]

    end = time.monotonic() + 30
    while (len(dead("orders.requests")) < 1 or len(dead("fulfillment.events")) < 2) \
            and time.monotonic() < end:
        time.sleep(0.2)
    requests, fulfillment = dead("orders.requests"), dead("fulfillment.events")
    assert [r["raw"] for r in requests] == [b"{not json"]
    assert "not valid JSON" in requests[0]["headers"]["dlq.error"]
    errors = sorted(r["headers"]["dlq.error"] for r in fulfillment)
    assert len(errors) == 2
    assert "carrier" in errors[0] or "carrier" in errors[1]
    assert any("OrderPacked" in e for e in errors)


async def test_cancel_racing_shipment_ends_each_order_in_one_consistent_state(
    workers: Any, bus: Bus, env: dict[str, str], tmp_path: Path
) -> None:
    placed = checkouts(bus, env, tmp_path, RACES)
    for i, (sid, order_id, _sku) in enumerate(placed):
        # The two within a millisecond or so, either one first. (Fetched in one
        # batch, the worker would always see the shipment first: a flush between
        # them lets either be fetched first, so both outcomes occur.)
        pair = [("orders.requests", "CancelOrderRequested"), ("fulfillment.events", "OrderShipped")]
        for topic, type_ in pair[:: 1 if i % 2 else -1]:
            send(bus, topic, type_, order_id, sid)
            bus.flush()
    sids = [sid for sid, _, _ in placed]
    settled = lambda ev: "OrderCancelled" in types(ev) or (
        "OrderShipped" in types(ev) and "OrderRequestRejected" in types(ev))
    found = events_until(bus, sids, settled, timeout=90)
    pay, stock = await money_and_stock(env, sids, [sku for _, _, sku in placed])

    outcomes = {"CANCELLED": 0, "SHIPPED": 0}
    for sid, order_id, sku in placed:
        ev = found[sid]
        assert settled(ev), (sid, types(ev))
        if "OrderCancelled" in types(ev):
            outcome = "CANCELLED"
            assert changes(ev) == [("CONFIRMED", "CANCELLING"), ("CANCELLING", "CANCELLED")]
            assert rejections(ev) == ["ORDER_CANCELLED"] and "OrderShipped" not in types(ev)
            assert pay[sid] in ("REFUNDED", "VOIDED"), (sid, pay[sid])
            assert stock[sku] == (2, 0, 0), (sku, stock[sku])
        else:
            outcome = "SHIPPED"
            assert changes(ev) == [("CONFIRMED", "SHIPPED")]
            assert rejections(ev) == ["ALREADY_SHIPPED"] and "OrderCancelled" not in types(ev)
            assert pay[sid] == "CAPTURED", (sid, pay[sid])
            assert stock[sku] == (1, 0, 1), (sku, stock[sku])
        outcomes[outcome] += 1
    print(f"cancel vs shipment, {RACES} races: {outcomes}")
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        statuses = dict(await conn.fetch(
            "SELECT order_id, status FROM orders.orders WHERE order_id = ANY($1::text[])",
            [o for _, o, _ in placed]))
    finally:
        await conn.close()
    for sid, order_id, _ in placed:
        expected = "CANCELLED" if "OrderCancelled" in types(found[sid]) else "SHIPPED"
        assert statuses[order_id] == expected
