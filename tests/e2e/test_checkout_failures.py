"""Every failure reason of the checkout saga, through the topics and the CLI:
stock back, nothing held, the order CANCELLED where one was created."""

from __future__ import annotations

import pytest
from helpers import Bus, checkout_event, cli, cli_json, uid


def stock(env, sku: str, price: int = 1000, quantity: int = 5) -> None:
    cli(env, "stock", "set", sku, "--price", str(price), "--quantity", str(quantity))


def assert_untouched(env, sku: str, quantity: int) -> None:
    shown = cli_json(env, "stock", "show", sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (quantity, 0, 0), shown


def order_status(env, sid: str) -> str | None:
    saga = cli_json(env, "saga", "show", sid)
    proc = cli(env, "order", "show", saga["order_id"], "--json", check=False)
    if proc.returncode != 0:
        return None
    import json

    return json.loads(proc.stdout)["status"]


@pytest.mark.parametrize(
    ("token", "reason", "detail_word"),
    [
        ("tok_chargeDeclined", "PAYMENT_DECLINED", "declined"),
        ("tok_insufficientFunds", "PAYMENT_DECLINED", "insufficient funds"),
    ],
)
def test_declined_payment_releases_stock_and_cancels_the_order(
    workers, bus: Bus, env, token: str, reason: str, detail_word: str
) -> None:
    sku = uid("SKU")
    stock(env, sku)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 2, 1000)], token=token))
    bus.flush()
    result = bus.result(sid)
    assert result["type"] == "CheckoutFailed"
    assert result["data"]["reason"] == reason
    assert detail_word in result["data"]["detail"].lower()
    assert_untouched(env, sku, 5)
    assert order_status(env, sid) == "CANCELLED"
    saga = cli_json(env, "saga", "show", sid)
    assert saga["status"] == "FAILED"
    undone = [s["step"] for s in saga["steps"] if s["kind"] == "compensated"]
    assert undone == ["create_order", "reserve_stock"]
    shown = cli_json(env, "order", "show", saga["order_id"])
    assert [h["to"] for h in shown["history"]] == ["PENDING", "PAYMENT_FAILED", "CANCELLED"]
    assert not bus.events_for("orders.confirmed", sid)


def test_unknown_sku_fails_and_names_it(workers, bus: Bus, env) -> None:
    known, unknown = uid("SKU"), uid("NOPE")
    stock(env, known)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(known, 1, 1000), (unknown, 1, 5)]))
    bus.flush()
    result = bus.result(sid)
    assert result["data"]["reason"] == "UNKNOWN_SKU"
    assert result["data"]["skus"] == [unknown]
    assert unknown in result["data"]["detail"]
    assert_untouched(env, known, 5)
    assert order_status(env, sid) is None  # failed before an order existed


def test_changed_price_fails_with_the_new_price(workers, bus: Bus, env) -> None:
    sku = uid("SKU")
    stock(env, sku, price=1250)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 1000)]))
    bus.flush()
    result = bus.result(sid)
    assert result["data"]["reason"] == "PRICE_CHANGED"
    assert result["data"]["skus"] == [sku]
    assert "1250" in result["data"]["detail"]
    assert_untouched(env, sku, 5)


def test_out_of_stock_holds_nothing(workers, bus: Bus, env) -> None:
    plenty, scarce = uid("A-SKU"), uid("B-SKU")
    stock(env, plenty, quantity=10)
    stock(env, scarce, quantity=1)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(plenty, 3, 1000), (scarce, 2, 1000)]))
    bus.flush()
    result = bus.result(sid)
    assert result["data"]["reason"] == "OUT_OF_STOCK"
    assert result["data"]["skus"] == [scarce]
    assert_untouched(env, plenty, 10)  # all lines or none
    assert_untouched(env, scarce, 1)


def test_payment_timeout_compensates_and_voids_the_late_authorization(workers, bus: Bus, env) -> None:
    """The workers run with CHECKOUT_PAYMENT_TIMEOUT_SECONDS=6 and the simulator
    answers tok_timeout 1 s after that: a late authorization that must be voided."""
    sku = uid("SKU")
    stock(env, sku)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 1000)], token="tok_timeout"))
    bus.flush()
    result = bus.result(sid, timeout=30)
    assert result["data"]["reason"] == "PAYMENT_TIMEOUT"
    assert_untouched(env, sku, 5)
    assert order_status(env, sid) == "CANCELLED"

    def late_voided() -> dict | None:
        saga = cli_json(env, "saga", "show", sid)
        late = [s for s in saga["steps"] if s["kind"] == "late-reply"]
        return saga if late else None

    from conftest import poll_until

    saga = poll_until(late_voided, timeout=20)
    assert saga, "the late authorization never reached the saga"
    assert saga["status"] == "FAILED"
    payment = _payment(env, sid)
    assert payment["status"] == "VOIDED", payment
    assert payment["gateway_status"] == "VOIDED", payment


def test_flaky_gateway_is_retried_and_succeeds_once(workers, bus: Bus, env) -> None:
    sku = uid("SKU")
    stock(env, sku)
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 1000)], token="tok_flaky"))
    bus.flush()
    result = bus.result(sid)
    assert result["type"] == "CheckoutSucceeded", result
    payment = _payment(env, sid)
    assert payment["status"] == "CAPTURED"
    assert payment["gateway_attempts"] == 3  # two transient failures, then approved


def _payment(env, sid: str) -> dict:
    import asyncio

    import asyncpg

    async def go() -> dict:
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            row = await conn.fetchrow(
                "SELECT p.status, g.status AS gateway_status, g.attempts + 1 AS gateway_attempts "
                "FROM payment.payments p JOIN payment.gateway g USING (idempotency_key) "
                "WHERE p.checkout_session_id = $1", sid)
            return dict(row) if row else {}
        finally:
            await conn.close()

    return asyncio.run(go())
