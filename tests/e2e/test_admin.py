"""Stuck sagas and what an operator does about them, on a stack of its own.

The inventory service is down at first: every checkout waits on ReserveStock,
re-sent at each deadline, until `saga list --stuck` shows it. An operator then
compensates two of them; their ReleaseStock is never answered either, so the
compensation is dead-lettered and the saga marked stuck. One is skipped by
hand, one retried; once inventory is back, every saga ends. Every admin action
is in the saga's log, the dead-lettered compensations are listed and put back
once, and `verify` finds nothing wrong afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from ops_helpers import OwnStack

from checkout_saga.client import Cart, checkout_request
from checkout_saga.ops.chaos import PRICE, seed

NO_INVENTORY = ("coordinator", "orders", "payment", "promotions", "timers")


def stuck(own: OwnStack, *extra: str) -> dict[str, dict[str, Any]]:
    return {s["checkout_session_id"]: s for s in own.invoke_json("saga", "list", "--stuck", *extra)}


def wait_until(check: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.2)


def log_of(own: OwnStack, session: str) -> list[tuple[str, str, str]]:
    return [(r["step"], r["kind"], r["detail"]) for r in own.sql(
        "SELECT step, kind, detail FROM saga.step_log WHERE checkout_session_id = $1 ORDER BY id",
        session)]


def test_operators_unstick_sagas_and_every_action_is_logged(own_workdir: Path) -> None:
    env = {"CHECKOUT_STEP_TIMEOUT_SECONDS": "0.5", "CHECKOUT_COMPENSATION_MAX_ATTEMPTS": "2"}
    with OwnStack(own_workdir, env) as own:
        assert own.settings is not None
        run = f"ad{random.randrange(10**6)}"
        asyncio.run(seed(own.settings, run))
        sku = f"CH-{run}-0"
        own.start(*NO_INVENTORY)
        a, b, c = (f"adm-{run}-{x}" for x in "abc")
        cart = Cart(own.settings)
        try:
            for sid in (a, b, c):
                cart.send(sid, checkout_request(sid, [(sku, 2, PRICE)]))
            cart.flush()

            # Waiting on a service that does not answer: listed once re-sent 3 times.
            def all_listed() -> dict[str, dict[str, Any]] | None:
                found = stuck(own, "--min-attempts", "3")
                return found if {a, b, c} <= set(found) else None

            listed = wait_until(all_listed, 60)
            assert listed, "the waiting sagas were never listed as stuck"
            assert listed[a]["step"] == "reserve_stock" and listed[a]["command"] == "ReserveStock"
            assert any("ReserveStock sent" in why for why in listed[a]["why"])
            assert b not in stuck(own, "--min-attempts", "1000")  # retrying within its deadline

            # Compensate a and c: their ReleaseStock is not answered either -> dead-lettered.
            done = own.invoke_json("saga", "compensate", a, "--reason", "INC-7: inventory down",
                                   "--operator", "alice")
            assert done["applied"] and done["status"] == "COMPENSATING"
            own.invoke("saga", "compensate", c, "--reason", "INC-7", "--operator", "alice")
            def both_stuck() -> dict[str, dict[str, Any]] | None:
                found = stuck(own)
                return found if all(found.get(x, {}).get("stuck") for x in (a, c)) else None

            gone = wait_until(both_stuck, 30)
            assert gone and "compensation dead-lettered" in gone[a]["why"]
            assert gone[a]["status"] == "COMPENSATING" and gone[a]["command"] == "ReleaseStock"

            # c: released by hand, so the compensation is skipped; the saga ends.
            own.invoke("saga", "skip-step", c, "--reason", "released by hand", "--operator", "bob")
            assert own.sql("SELECT status FROM saga.instances WHERE checkout_session_id = $1",
                           c) == [{"status": "FAILED"}]
            refused = own.invoke("saga", "retry", c, "--reason", "again?", code=1)
            assert "refused" in refused.stderr and "ended" in refused.stderr
            # A step cannot be skipped without a reason.
            assert own.invoke("saga", "skip-step", a, "--reason", " ", code=1).exit_code == 1

            # a: retried (unstuck, a fresh budget), then inventory comes back.
            retried = own.invoke_json("saga", "retry", a, "--reason", "inventory is back",
                                      "--operator", "alice")
            assert retried["applied"] and not retried["stuck"]
            own.start("inventory")
            results = cart.results([a, b, c], 60)
        finally:
            cart.close()
        assert results[a]["type"] == "CheckoutFailed" and results[a]["data"]["reason"] == "CANCELLED"
        assert "INC-7" in results[a]["data"]["detail"]
        assert results[b]["type"] == "CheckoutSucceeded"  # nobody touched it: it just went on
        assert results[c]["data"]["reason"] == "CANCELLED"
        assert stuck(own) == {}

        # Every admin action, done or refused, is in the saga's log with who and why.
        log_a, log_c = log_of(own, a), log_of(own, c)
        admin_a = [d for _, kind, d in log_a if kind == "admin"]
        assert any("compensate by alice: INC-7: inventory down" in d for d in admin_a)
        assert any("retry by alice: inventory is back" in d for d in admin_a)
        assert ("reserve_stock", "dead-letter") in [(s, k) for s, k, _ in log_a]
        assert [(s, k) for s, k, _ in log_c if k.startswith("admin") or k == "skipped"] == [
            ("reserve_stock", "admin"), ("reserve_stock", "admin"), ("reserve_stock", "skipped"),
            ("-", "admin-rejected")]
        assert any("skip-step by bob: released by hand" in d for _, _, d in log_c)
        refused_shown = own.invoke_json("saga", "show", c)["steps"]
        assert any(s["kind"] == "admin-rejected" for s in refused_shown)

        # The dead-lettered compensations: listed, and put back once.
        letters = own.invoke_json("dlq", "list", "saga.inventory.commands")
        ours = [e for e in letters if e["key"] == a]
        assert ours and all(e["stage"] == "compensation" and "ReleaseStock" in e["error"]
                            for e in ours)
        first = own.invoke_json("dlq", "redrive", "saga.inventory.commands", "--key", a)
        assert first["redriven"] == len(ours)
        again = own.invoke_json("dlq", "redrive", "saga.inventory.commands", "--key", a)
        assert again["redriven"] == 0 and again["already_redriven"] == len(ours)
        relisted = own.invoke_json("dlq", "list", "saga.inventory.commands")
        assert all(e["redriven"] for e in relisted if e["key"] == a)
        # Handled as a duplicate (the saga already ended): nothing changes, the log says so.
        assert wait_until(lambda: any(k == "ignored" and "ReleaseStock" in d
                                      for _, k, d in log_of(own, a)), 30)
        stock = own.sql("SELECT available, held, sold FROM inventory.products WHERE sku = $1", sku)
        assert stock == [{"available": 100_000 - 2, "held": 0, "sold": 2}]  # b only

        verified = own.invoke("verify", "--grace", "1", code=None)
        assert verified.exit_code == 0, verified.stdout
