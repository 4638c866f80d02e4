"""The happy path, through the topics and the CLI only."""

from __future__ import annotations

from helpers import Bus, checkout_event, cli, cli_json, uid


def test_checkout_succeeds_sells_stock_and_confirms_the_order(workers, bus: Bus, env) -> None:
    sku_a, sku_b = uid("SKU-A"), uid("SKU-B")
    cli(env, "stock", "set", sku_a, "--price", "1999", "--quantity", "10")
    cli(env, "stock", "set", sku_b, "--price", "500", "--quantity", "3")
    sid = uid("cs")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku_a, 2, 1999), (sku_b, 3, 500)]))
    bus.flush()

    result = bus.result(sid)
    assert result["type"] == "CheckoutSucceeded", result
    data = result["data"]
    assert (data["subtotal"], data["discount"], data["total"]) == (5498, 0, 5498)
    assert data["currency"] == "USD"
    assert result["specversion"] == "1.0" and result["subject"] == sid

    confirmed = bus.wait_for("orders.confirmed", [sid])[sid]
    assert len(confirmed) == 1
    order = confirmed[0]["data"]
    assert order["order_id"] == data["order_id"]
    assert order["items"] == [{"sku": sku_a, "quantity": 2, "unit_price": 1999},
                              {"sku": sku_b, "quantity": 3, "unit_price": 500}]
    assert order["shipping_address"]["city"] == "Springfield"

    a = cli_json(env, "stock", "show", sku_a)
    b = cli_json(env, "stock", "show", sku_b)
    assert (a["available"], a["held"], a["sold"]) == (8, 0, 2)
    assert (b["available"], b["held"], b["sold"]) == (0, 0, 3)

    saga = cli_json(env, "saga", "show", sid)
    assert saga["status"] == "SUCCEEDED"
    kinds = [(s["step"], s["kind"]) for s in saga["steps"]]
    for step in ("reserve_stock", "create_order", "authorize_payment", "commit_stock",
                 "capture_payment", "confirm_order"):
        assert (step, "succeeded") in kinds
    shown = cli_json(env, "order", "show", data["order_id"])
    assert shown["status"] == "CONFIRMED"
    assert [h["to"] for h in shown["history"]] == ["PENDING", "PAYMENT_AUTHORIZED", "CONFIRMED"]
