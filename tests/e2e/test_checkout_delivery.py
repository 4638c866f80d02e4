"""At-least-once delivery from the outside: duplicates, replays of a finished
session, garbage on the input topic, and a storm on one SKU."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
from helpers import Bus, checkout_event, cli, cli_json, uid


def count_rows(env, sql: str, *args: object) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_one_request_delivered_five_times_gives_one_order_and_one_authorization(
    workers, bus: Bus, env
) -> None:
    sku = uid("SKU")
    cli(env, "stock", "set", sku, "--price", "700", "--quantity", "10")
    sid = uid("cs")
    event = checkout_event(sid, [(sku, 1, 700)])
    for _ in range(5):  # the very same bytes, same CloudEvents id
        bus.send("checkout.requested", sid, event)
    bus.flush()
    bus.result(sid)
    time.sleep(2.0)  # let every repeat be handled
    results = bus.events_for("checkout.results", sid)
    # Repeats that arrive while the saga runs change nothing; those after its
    # end re-send the same result (same id, same order id). None starts anything.
    assert 1 <= len(results) <= 5
    assert {r["type"] for r in results} == {"CheckoutSucceeded"}
    assert len({r["id"] for r in results}) == 1
    assert len({r["data"]["order_id"] for r in results}) == 1
    assert count_rows(env, "SELECT count(*) FROM orders.orders WHERE checkout_session_id = $1", sid) == 1
    assert count_rows(env, "SELECT count(*) FROM payment.gateway WHERE idempotency_key = $1 "
                           "AND status IN ('AUTHORIZED', 'CAPTURED')", f"pay:{sid}") == 1
    shown = cli_json(env, "stock", "show", sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (9, 0, 1)
    assert len({e["id"] for e in bus.events_for("orders.confirmed", sid)}) == 1


def one_success(bus: Bus, env: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    """A SKU, a session that bought one unit of it, and its CheckoutSucceeded."""
    sku = uid("SKU")
    cli(env, "stock", "set", sku, "--price", "700", "--quantity", "10")
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 700)]))
    bus.flush()
    first = bus.result(sid)
    assert first["type"] == "CheckoutSucceeded"
    return sku, sid, first


def test_repeat_of_a_finished_session_republishes_its_result(workers, bus: Bus, env) -> None:
    sku, sid, first = one_success(bus, env)
    # A replay with a NEW CloudEvents id (the cart retried) still has no effect.
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 700)]))
    bus.flush()
    both = bus.wait_for("checkout.results", [sid], count=2)[sid]
    assert len(both) == 2
    assert both[1]["id"] == first["id"] and both[1]["data"] == first["data"]
    shown = cli_json(env, "stock", "show", sku)
    assert shown["sold"] == 1
    bus.wait_for("orders.confirmed", [sid])  # a fresh reader may take a moment to catch up
    assert len(bus.events_for("orders.confirmed", sid, 0.5)) == 1  # not re-sent


def test_a_malformed_resend_of_a_finished_session_republishes_its_own_result(
    workers, bus: Bus, env
) -> None:
    """Guarantee 5: one result per session. A re-send with quantity 0 after
    CheckoutSucceeded, and two replays of it, each republish the success under
    its id; none says INVALID_REQUEST, none mints a new id."""
    sku, sid, first = one_success(bus, env)
    malformed = json.loads(checkout_event(sid, [(sku, 1, 700)]))
    malformed["data"]["items"][0]["quantity"] = 0
    for _ in range(3):  # the re-send, then two replays of the same bytes
        bus.send("checkout.requested", sid, json.dumps(malformed).encode())
    bus.flush()
    bus.wait_for("checkout.results", [sid], count=4)
    time.sleep(1.0)  # a fifth answer would show up now
    answers = bus.events_for("checkout.results", sid)
    assert len(answers) == 4, answers
    assert all(a["type"] == "CheckoutSucceeded" and a["id"] == first["id"]
               and a["data"] == first["data"] for a in answers), answers
    assert cli_json(env, "stock", "show", sku)["sold"] == 1


def test_garbage_is_dead_lettered_answered_where_possible_and_the_partition_moves_on(
    workers, bus: Bus, env
) -> None:
    sku = uid("SKU")
    cli(env, "stock", "set", sku, "--price", "700", "--quantity", "10")
    readable = uid("cs")
    bad_items = json.loads(checkout_event(readable, [(sku, 1, 700)]))
    bad_items["data"]["items"][0]["unit_price"] = 7.5  # money is never a float
    after = uid("cs")
    # All on one key, so one partition: the good request behind must still run.
    key = readable
    bus.send("checkout.requested", key, b"\xff\xfe not json at all")
    bus.send("checkout.requested", key, b'{"specversion": "1.0"}')
    bus.send("checkout.requested", key, json.dumps(bad_items).encode())
    bus.send("checkout.requested", key, checkout_event(after, [(sku, 1, 700)]))
    bus.flush()

    # The key is the session id by contract, so even the unreadable bytes are
    # answered; the session's first answer is its one result, and the two
    # later bad requests republish it under the same id.
    answers = bus.wait_for("checkout.results", [readable], count=3)[readable]
    assert len(answers) == 3
    assert {a["id"] for a in answers} == {answers[0]["id"]}
    assert all(a["data"] == answers[0]["data"] for a in answers)
    assert answers[0]["type"] == "CheckoutFailed"
    assert answers[0]["data"]["reason"] == "INVALID_REQUEST"
    assert "not valid UTF-8" in answers[0]["data"]["detail"]
    assert bus.result(after)["type"] == "CheckoutSucceeded"

    def dlq_entries() -> list[dict]:
        return [r for r in bus.poll("checkout.requested.dlq", 0.3) if r["key"] == key]

    from conftest import poll_until

    entries = poll_until(lambda: len(dlq_entries()) >= 3 and dlq_entries(), timeout=20)
    assert len(entries) == 3
    raw = {e["raw"] for e in entries}
    assert b"\xff\xfe not json at all" in raw
    for e in entries:
        assert e["headers"]["dlq.error"]
        assert e["headers"]["dlq.source.topic"] == "checkout.requested"
        assert int(e["headers"]["dlq.source.offset"]) >= 0


def test_storm_of_200_checkouts_for_50_units_sells_exactly_50(workers, bus: Bus, env) -> None:
    sku = uid("HOT")
    cli(env, "stock", "set", sku, "--price", "999", "--quantity", "50")
    sessions = [uid("storm") for _ in range(200)]
    for sid in sessions:
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 999)]))
    bus.flush()
    found = bus.wait_for("checkout.results", sessions, timeout=120)
    results = [v[0] for v in found.values() if v]
    assert len(results) == 200
    succeeded = [r for r in results if r["type"] == "CheckoutSucceeded"]
    failed = [r for r in results if r["type"] == "CheckoutFailed"]
    assert len(succeeded) == 50
    assert {r["data"]["reason"] for r in failed} == {"OUT_OF_STOCK"}
    shown = cli_json(env, "stock", "show", sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (0, 0, 50)
    assert count_rows(env, "SELECT count(*) FROM inventory.holds WHERE sku = $1 AND status = 'ACTIVE'", sku) == 0
