"""`verify` can fail: each kind of breach, planted by hand, is reported.

Planted on a stack of its own (verify checks the live data as a whole, so a
planted breach must never reach the session's shared stack). The guarantees
held by the running system are verified after the storms of test_chaos,
test_replay and test_admin.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from helpers import Bus, checkout_event, uid
from ops_helpers import OwnStack

HOUR_AGO = "now() - interval '1 hour'"


def state(order_id: str | None = None, stuck: bool = False) -> str:
    return json.dumps({"context": {"order_id": order_id}, "stuck": stuck})


def plant(own: OwnStack) -> dict[str, str]:
    ids = {k: uid(k) for k in ("oversold", "books", "heldsku", "holdsku", "twoorders", "failedpay",
                               "lostsaga", "stucksaga", "noorder", "twiceconfirmed", "promo",
                               "unhandled", "silent", "twoanswers")}
    ids["charge"] = f"pay:{uid('ghost')}"
    # The books are recomputed, not trusted to the CHECK constraints: drop them.
    own.sql("""DO $$ DECLARE c text; BEGIN
        FOR c IN SELECT conname FROM pg_constraint
                 WHERE conrelid IN ('inventory.products'::regclass, 'orders.orders'::regclass)
                   AND contype IN ('c', 'u') LOOP
          EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I',
            (SELECT conrelid::regclass FROM pg_constraint WHERE conname = c LIMIT 1), c);
        END LOOP; END $$""")
    products = [(ids["oversold"], 5, 0, 3, 4), (ids["books"], 10, 5, 0, 0),
                (ids["heldsku"], 10, 8, 2, 0), (ids["holdsku"], 10, 9, 1, 0)]
    for sku, added, available, held, sold in products:
        own.sql("INSERT INTO inventory.products (sku, price, added, available, held, sold) "
                "VALUES ($1, 100, $2, $3, $4, $5)", sku, added, available, held, sold)
    own.sql(f"INSERT INTO inventory.holds (checkout_session_id, sku, quantity, expires_at) "
            f"VALUES ($1, $2, 1, {HOUR_AGO})", uid("cs"), ids["holdsku"])

    def saga(session: str, status: str, order_id: str | None = None, *, stuck: bool = False,
             deadline: str = "NULL", finished: str = "NULL") -> None:
        own.sql(f"INSERT INTO saga.instances (checkout_session_id, definition_version, status, "
                f"state, deadline_at, finished_at) VALUES ($1, 2, $2, $3::jsonb, {deadline}, "
                f"{finished})", session, status, state(order_id, stuck))

    def order(session: str, order_id: str, confirmed: bool = True) -> None:
        own.sql("INSERT INTO orders.orders (order_id, checkout_session_id, customer_id, status, "
                "items, subtotal, discount, total, currency, confirmed_at) VALUES ($1, $2, 'c', "
                "'CONFIRMED', '[]', 1, 0, 1, 'USD', CASE WHEN $3 THEN now() END)",
                order_id, session, confirmed)

    saga(ids["twoorders"], "SUCCEEDED", "ord_a", finished="now()")
    order(ids["twoorders"], f"ord_a_{ids['twoorders']}")
    order(ids["twoorders"], f"ord_b_{ids['twoorders']}")
    saga(ids["failedpay"], "FAILED", finished="now()")
    own.sql(f"INSERT INTO payment.payments (checkout_session_id, idempotency_key, amount, currency,"
            f" status, updated_at) VALUES ($1, $2, 100, 'USD', 'AUTHORIZED', {HOUR_AGO})",
            ids["failedpay"], f"pay:{ids['failedpay']}")
    own.sql(f"INSERT INTO payment.gateway (idempotency_key, token, amount, currency, status, "
            f"created_at) VALUES ($1, 'tok_visa', 100, 'USD', 'CAPTURED', {HOUR_AGO})", ids["charge"])
    saga(ids["lostsaga"], "RUNNING", deadline=HOUR_AGO)
    saga(ids["stucksaga"], "COMPENSATING", stuck=True, deadline="now() + interval '1 hour'")
    saga(ids["noorder"], "SUCCEEDED", "ord_none", finished="now()")
    order_id = f"ord_{ids['twiceconfirmed']}"
    saga(ids["twiceconfirmed"], "SUCCEEDED", order_id, finished="now()")
    order(ids["twiceconfirmed"], order_id)
    saga(ids["silent"], "FAILED", finished=HOUR_AGO)
    # A succeeded checkout answered INVALID_REQUEST too (a malformed re-send), under a new id.
    saga(ids["twoanswers"], "SUCCEEDED", f"ord_{ids['twoanswers']}", finished="now()")
    order(ids["twoanswers"], f"ord_{ids['twoanswers']}")
    own.sql("INSERT INTO promotions.codes (code, percent_off, max_uses, taken) VALUES ($1, 10, 5, 3)",
            ids["promo"])
    own.sql("INSERT INTO promotions.usages (checkout_session_id, code, discount, status) "
            "VALUES ($1, $2, 1, 'TAKEN')", uid("cs"), ids["promo"])

    bus = Bus(own.bootstrap)
    try:
        for _ in range(2):  # the same order confirmed twice, under two event ids
            bus.send("orders.confirmed", ids["twiceconfirmed"], json.dumps({
                "specversion": "1.0", "id": str(uuid.uuid4()), "type": "OrderConfirmed",
                "source": "urn:test", "subject": ids["twiceconfirmed"],
                "data": {"order_id": order_id, "checkout_session_id": ids["twiceconfirmed"]},
            }).encode())
        for type_, data in (("CheckoutSucceeded", {"order_id": f"ord_{ids['twoanswers']}",
                                                   "subtotal": 1, "discount": 0, "total": 1,
                                                   "currency": "USD"}),
                            ("CheckoutFailed", {"reason": "INVALID_REQUEST", "detail": "bad"})):
            bus.send("checkout.results", ids["twoanswers"], json.dumps({
                "specversion": "1.0", "id": str(uuid.uuid4()), "type": type_,
                "source": "urn:test", "subject": ids["twoanswers"], "time": "2026-12-01T00:00:00Z",
                "data": {"checkout_session_id": ids["twoanswers"], **data},
            }).encode())
        bus.send("checkout.requested", ids["unhandled"],
                 checkout_event(ids["unhandled"], [("SKU-1", 1, 100)]))
        bus.flush()
    finally:
        bus.close()
    return ids


EXPECTED = {  # check -> the planted id its report must name
    "no-oversell": "oversold", "stock-books": "books", "held-matches-holds": "heldsku",
    "holds-end": "holdsku", "one-order": "twoorders", "one-charge": "failedpay",
    "sagas-end": "lostsaga", "succeeded-has-order": "noorder",
    "order-confirmed-once": "twiceconfirmed", "promo-counters": "promo",
    "requests-handled": "unhandled", "results-published": "silent",
}


def test_verify_reports_every_kind_of_planted_breach(own_workdir: Path) -> None:
    with OwnStack(own_workdir) as own:
        clean = own.invoke_json("verify", "--grace", "0")
        assert clean["ok"] and clean["breaches"] == 0
        assert {c["name"] for c in clean["checks"]} == set(EXPECTED)
        assert all(c["status"] == "ok" for c in clean["checks"])

        ids = plant(own)
        result = own.invoke("verify", "--grace", "0", "--json", code=1)
        report = json.loads(result.stdout)
        assert not report["ok"]
        checks: dict[str, Any] = {c["name"]: c for c in report["checks"]}
        for name, planted in EXPECTED.items():
            assert checks[name]["status"] == "breach", (name, checks[name])
            assert ids[planted] in json.dumps(checks[name]["breaches"]), (name, checks[name])
        charges = json.dumps(checks["one-charge"]["breaches"])
        assert ids["charge"] in charges and "failed checkout" in charges
        assert ids["stucksaga"] in json.dumps(checks["sagas-end"]["breaches"])
        problems = json.dumps(checks["order-confirmed-once"]["breaches"])
        assert "2 OrderConfirmed events with different ids" in problems
        results = [b for b in checks["results-published"]["breaches"]
                   if b["checkout_session_id"] == ids["twoanswers"]]
        assert {b["problem"] for b in results} == {
            "another result was published too: CheckoutFailed INVALID_REQUEST",
            "2 results with different ids"}

        readable = own.invoke("verify", "--grace", "0", code=1).stdout
        assert "BREACH" in readable and "do NOT hold" in readable
        assert ids["oversold"] in readable

        # Without the promotions schema, its check is skipped, not failed.
        own.sql("DROP SCHEMA promotions CASCADE")
        skipped = {c["name"]: c for c in json.loads(
            own.invoke("verify", "--grace", "0", "--json", code=1).stdout)["checks"]}
        assert skipped["promo-counters"]["status"] == "skipped"
