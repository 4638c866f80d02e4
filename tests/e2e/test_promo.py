"""Promo codes through the topics and the CLI only: the discount in the results,
the invalid codes, the use limit under concurrency, the use given back on a
declined payment, and the count surviving a Redis restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from helpers import Bus, checkout_event, cli, cli_json, uid

T = TypeVar("T")


def create_promo(env: dict[str, str], *args: str) -> str:
    code = uid("PROMO").upper()
    cli(env, "promo", "create", code, *args)
    return code


def in_parallel(*calls: Callable[[], T]) -> list[T]:
    """Run independent CLI calls at once: each one is a ~1 s process start."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def stocked(env: dict[str, str], price: int, quantity: int) -> str:
    sku = uid("SKU-P")
    cli(env, "stock", "set", sku, "--price", str(price), "--quantity", str(quantity))
    return sku


def send_all(bus: Bus, sessions: list[str], sku: str, price: int, code: str | None,
             token: str = "tok_visa") -> None:
    for sid in sessions:
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, price)], token=token,
                                                           promo_code=code))
    bus.flush()


def results(bus: Bus, sessions: list[str], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    found = bus.wait_for("checkout.results", sessions, timeout)
    missing = [s for s, events in found.items() if not events]
    assert not missing, f"{len(missing)} checkouts got no result, e.g. {missing[:3]}"
    return {s: events[0] for s, events in found.items()}


def wait_for_some(bus: Bus, sessions: list[str], at_least: int, timeout: float = 60.0) -> None:
    wanted, end = set(sessions), time.monotonic() + timeout
    while time.monotonic() < end:
        seen = {r["value"]["subject"] for r in bus.poll("checkout.results", 0.05)
                if isinstance(r["value"], dict) and r["value"].get("subject") in wanted}
        if len(seen) >= at_least:
            return
    raise AssertionError(f"fewer than {at_least} results within {timeout}s")


def outcome(result: dict[str, Any]) -> str:
    return result["type"] if result["type"] == "CheckoutSucceeded" else result["data"]["reason"]


def test_discounted_checkout_shows_the_discount_everywhere(workers, bus: Bus, env) -> None:
    sku, code = in_parallel(lambda: stocked(env, 2249, 10),
                            lambda: create_promo(env, "--percent-off", "10", "--max-uses", "5"))
    sid = uid("cs")
    # The code is matched case-insensitively, as customers type it.
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 2, 2249)], promo_code=code.lower()))
    bus.flush()

    result = bus.result(sid)
    assert result["type"] == "CheckoutSucceeded", result
    data = result["data"]
    # 10% of 4498 is 449.8: the discount is whole cents, rounded down.
    assert (data["subtotal"], data["discount"], data["total"]) == (4498, 449, 4049)
    order = bus.wait_for("orders.confirmed", [sid])[sid][0]["data"]
    assert (order["subtotal"], order["discount"], order["total"]) == (4498, 449, 4049)
    assert order["order_id"] == data["order_id"]

    shown, saga = in_parallel(lambda: cli_json(env, "promo", "show", code),
                              lambda: cli_json(env, "saga", "show", sid))
    assert (shown["code"], shown["max_uses"], shown["used"], shown["remaining"]) == (code, 5, 1, 4)
    assert ("apply_promo", "succeeded") in [(s["step"], s["kind"]) for s in saga["steps"]]


def test_invalid_codes_fail_before_any_stock_is_held(workers, bus: Bus, env) -> None:
    # promo create refuses a time already past: the code expires moments after.
    soon = datetime.now(UTC) + timedelta(seconds=15)  # CLI starts are slow on a busy machine
    sku, expired, other_skus, min_subtotal = in_parallel(
        lambda: stocked(env, 1000, 10),
        lambda: create_promo(env, "--amount-off", "100", "--max-uses", "5",
                             "--expires-at", soon.isoformat()),
        # Other SKUs of the catalogue: promo create refuses SKUs not in inventory.
        lambda: create_promo(env, "--percent-off", "10", "--max-uses", "5",
                             "--skus", f"{stocked(env, 1000, 1)},{stocked(env, 1000, 1)}"),
        lambda: create_promo(env, "--percent-off", "10", "--max-uses", "5",
                             "--min-subtotal", "5000"),
    )
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds() + 0.1))
    cases = {
        "unknown": (uid("NOPE").upper(), "does not exist"),
        "expired": (expired, "expired"),
        "other skus": (other_skus, "does not apply"),
        "min subtotal": (min_subtotal, "at least 5000"),
    }
    sessions = {case: uid("cs") for case in cases}
    for case, (code, _) in cases.items():
        sid = sessions[case]
        bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 1000)], promo_code=code))
    bus.flush()

    found = results(bus, list(sessions.values()), timeout=60)
    for case, (code, words) in cases.items():
        result = found[sessions[case]]
        assert result["type"] == "CheckoutFailed", (case, result)
        assert result["data"]["reason"] == "PROMO_INVALID", (case, result)
        assert words in result["data"]["detail"] and code in result["data"]["detail"], (case, result)
    shown, stock = in_parallel(lambda: cli_json(env, "promo", "show", expired),
                               lambda: cli_json(env, "stock", "show", sku))
    assert shown["used"] == 0
    assert (stock["available"], stock["held"], stock["sold"]) == (10, 0, 0)


def test_concurrent_checkouts_take_exactly_the_uses_there_are(workers, bus: Bus, env) -> None:
    sku, code = in_parallel(lambda: stocked(env, 2000, 1000),
                            lambda: create_promo(env, "--amount-off", "250", "--max-uses", "100"))
    sessions = [uid("cs") for _ in range(500)]
    send_all(bus, sessions, sku, 2000, code)

    found = results(bus, sessions)
    outcomes = Counter(outcome(r) for r in found.values())
    assert outcomes == {"CheckoutSucceeded": 100, "PROMO_EXHAUSTED": 400}, outcomes
    winners = [s for s, r in found.items() if r["type"] == "CheckoutSucceeded"]
    assert all((found[s]["data"]["discount"], found[s]["data"]["total"]) == (250, 1750)
               for s in winners)
    loser = next(r for r in found.values() if r["type"] == "CheckoutFailed")
    assert code in loser["data"]["detail"] and "no uses left" in loser["data"]["detail"]
    confirmed = bus.wait_for("orders.confirmed", winners)
    assert all(events and events[0]["data"]["discount"] == 250 for events in confirmed.values())

    shown, stock = in_parallel(lambda: cli_json(env, "promo", "show", code),
                               lambda: cli_json(env, "stock", "show", sku))
    assert (shown["used"], shown["remaining"], shown["max_uses"]) == (100, 0, 100)
    assert (stock["sold"], stock["held"]) == (100, 0)


def test_declined_payments_give_their_use_back(workers, bus: Bus, env) -> None:
    sku, code = in_parallel(lambda: stocked(env, 1000, 100),
                            lambda: create_promo(env, "--percent-off", "50", "--max-uses", "3"))
    declined = [uid("cs") for _ in range(3)]
    send_all(bus, declined, sku, 1000, code, token="tok_chargeDeclined")
    assert {outcome(r) for r in results(bus, declined, 60).values()} == {"PAYMENT_DECLINED"}
    shown = cli_json(env, "promo", "show", code)
    assert (shown["used"], shown["remaining"]) == (0, 3)

    # Every use given back can be taken again, and then no more.
    approved = [uid("cs") for _ in range(4)]
    send_all(bus, approved, sku, 1000, code)
    found = results(bus, approved, 60)
    assert Counter(outcome(r) for r in found.values()) == {"CheckoutSucceeded": 3,
                                                           "PROMO_EXHAUSTED": 1}
    assert {r["data"]["total"] for r in found.values() if r["type"] == "CheckoutSucceeded"} == {500}
    shown = cli_json(env, "promo", "show", code)
    assert (shown["used"], shown["remaining"]) == (3, 0)


def test_redis_restart_midway_keeps_the_count_right(workers, stack, bus: Bus, env) -> None:
    sku, code = in_parallel(lambda: stocked(env, 1000, 1000),
                            lambda: create_promo(env, "--amount-off", "100", "--max-uses", "60"))
    first, second = [uid("cs") for _ in range(50)], [uid("cs") for _ in range(150)]
    send_all(bus, first, sku, 1000, code)
    wait_for_some(bus, first, 10)  # uses are taken and sagas are finishing
    send_all(bus, second, sku, 1000, code)
    stack.servers.restart_redis()  # while the second wave is taking the last 10 uses

    found = results(bus, first + second)
    outcomes = Counter(outcome(r) for r in found.values())
    assert outcomes == {"CheckoutSucceeded": 60, "PROMO_EXHAUSTED": 140}, outcomes
    assert all(found[s]["type"] == "CheckoutSucceeded" for s in first)

    # Redis empty again once the code is used up: the gate is rebuilt from the
    # ledger, and the code stays used up.
    stack.servers.restart_redis()
    late = uid("cs")
    send_all(bus, [late], sku, 1000, code)
    assert outcome(bus.result(late)) == "PROMO_EXHAUSTED"
    shown = cli_json(env, "promo", "show", code)
    assert (shown["used"], shown["remaining"]) == (60, 0)


def test_cli_refuses_bad_definitions_duplicates_and_unknown_codes(stack, env) -> None:
    code = create_promo(env, "--percent-off", "10", "--max-uses", "1")
    both, duplicate, unknown, bad_time = in_parallel(
        lambda: cli(env, "promo", "create", uid("X"), "--percent-off", "10", "--amount-off", "5",
                    "--max-uses", "1", check=False),
        lambda: cli(env, "promo", "create", code.lower(), "--amount-off", "5", "--max-uses", "9",
                    check=False),
        lambda: cli(env, "promo", "show", uid("NOPE"), check=False),
        lambda: cli(env, "promo", "create", uid("X"), "--percent-off", "10", "--max-uses", "1",
                    "--expires-at", "next tuesday", check=False),
    )
    assert both.returncode == 2 and "exactly one" in both.stderr
    assert duplicate.returncode == 1 and "exists already" in duplicate.stderr
    assert unknown.returncode == 1 and "No promo code" in unknown.stderr
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
    shown = cli_json(env, "promo", "show", code)  # the duplicate changed nothing
    assert (shown["percent_off"], shown["amount_off"], shown["max_uses"]) == (10, None, 1)
