"""A compensation re-sent because its action landed late acts again.

The scenario, on the real servers: a service's database refuses one checkout's
action (a CHECK constraint that names the session, as a bad migration or a
locked-down table would), so the action is dead-lettered and the saga waits;
an operator gives the checkout up (`saga compensate`), and the compensation
finds nothing to undo. The operator then fixes the table and redrives the
dead letters: the action lands after its compensation. The saga sees the late
success and sends the compensation again, which must undo it this time; with
the inbox answering the recorded reply instead, the hold, the order or the
promo use would stay behind (a PENDING order and a promo use lost for good).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from conftest import poll_until
from helpers import Bus, checkout_event, cli, cli_json, uid
from ops_helpers import invoke
from ops_helpers import sql as run_sql


@dataclass(frozen=True)
class Case:
    table: str  # where the action writes, refused for one session
    topic: str  # the service's command topic
    compensation: str


CASES = {
    "ReleaseStock": Case("inventory.holds", "saga.inventory.commands", "ReleaseStock"),
    "CancelOrder": Case("orders.orders", "saga.orders.commands", "CancelOrder"),
    "ReleasePromo": Case("promotions.usages", "saga.promotions.commands", "ReleasePromo"),
}


def sql(env: dict[str, str], query: str, *args: Any) -> list[dict[str, Any]]:
    return run_sql(env["DATABASE_URL"], query, *args)


def wait_until(check: Any, timeout: float = 40.0) -> Any:
    return poll_until(check, timeout=timeout, interval=0.2)


def dead_letters(env: dict[str, str], topic: str, sid: str) -> list[dict[str, Any]]:
    listed = json.loads(invoke(env, "dlq", "list", topic, "--json").stdout)
    return [e for e in listed if e["key"] == sid]


def steps(env: dict[str, str], sid: str) -> list[dict[str, Any]]:
    return cli_json(env, "saga", "show", sid)["steps"]  # type: ignore[no-any-return]


def what_is_left(env: dict[str, str], name: str, sid: str, sku: str, code: str) -> dict[str, Any]:
    if name == "ReleaseStock":
        holds = sql(env, "SELECT status FROM inventory.holds WHERE checkout_session_id = $1", sid)
        shown = cli_json(env, "stock", "show", sku)
        return {"holds": [h["status"] for h in holds], "held": shown["held"]}
    if name == "CancelOrder":
        orders = sql(env, "SELECT status FROM orders.orders WHERE checkout_session_id = $1", sid)
        return {"orders": [o["status"] for o in orders]}
    usages = sql(env, "SELECT status FROM promotions.usages WHERE checkout_session_id = $1", sid)
    return {"usages": [u["status"] for u in usages],
            "used": cli_json(env, "promo", "show", code)["used"]}


UNDONE = {
    "ReleaseStock": {"holds": ["RELEASED"], "held": 0},
    "CancelOrder": {"orders": ["CANCELLED"]},
    "ReleasePromo": {"usages": ["RELEASED"], "used": 0},
}


def test_a_compensation_resent_after_its_action_landed_late_undoes_it(
    workers, bus: Bus, env: dict[str, str]
) -> None:
    """The three compensations at once, one checkout each (their waits overlap)."""
    run = {name: (uid("SKU-LATE"), uid("cs-late"), uid("LATE").upper()) for name in CASES}
    constraints = {}
    for name, (sku, sid, code) in run.items():
        cli(env, "stock", "set", sku, "--price", "1000", "--quantity", "5")
        cli(env, "promo", "create", code, "--percent-off", "10", "--max-uses", "5")
        constraints[name] = f"refuse_{sid.replace('-', '_')}"
        sql(env, f"ALTER TABLE {CASES[name].table} ADD CONSTRAINT {constraints[name]} "
                 f"CHECK (checkout_session_id <> '{sid}') NOT VALID")
    try:
        for sku, sid, code in run.values():
            bus.send("checkout.requested", sid,
                     checkout_event(sid, [(sku, 1, 1000)], promo_code=code))
        bus.flush()
        for name, (_, sid, _) in run.items():
            assert wait_until(lambda: dead_letters(env, CASES[name].topic, sid)), (
                f"{name}: the action was not refused")
            cli(env, "saga", "compensate", sid, "--reason", "the table refuses this checkout")
        for name, (_, sid, _) in run.items():
            result = bus.result(sid)
            assert (result["type"], result["data"]["reason"]) == ("CheckoutFailed", "CANCELLED")
            assert wait_until(lambda: [s for s in steps(env, sid) if s["kind"] == "compensated"
                                       and s["detail"].startswith(CASES[name].compensation)])
    finally:
        for name, constraint in constraints.items():
            sql(env, f"ALTER TABLE {CASES[name].table} DROP CONSTRAINT IF EXISTS {constraint}")

    # The fixed tables take the redriven actions: each lands after its compensation.
    for name, (_, sid, _) in run.items():
        invoke(env, "dlq", "redrive", CASES[name].topic, "--key", sid)
    for name, (sku, sid, code) in run.items():
        assert wait_until(lambda: [s for s in steps(env, sid) if s["kind"] == "late-reply"]), \
            f"{name}: the redriven action never reached the saga"
        left = wait_until(lambda: (lambda now: now if now == UNDONE[name] else None)(
            what_is_left(env, name, sid, sku, code)), timeout=20)
        assert left == UNDONE[name], (name, what_is_left(env, name, sid, sku, code))
        assert cli_json(env, "saga", "show", sid)["status"] == "FAILED"
        shown = cli_json(env, "stock", "show", sku)
        assert (shown["available"], shown["held"], shown["sold"]) == (5, 0, 0), (name, shown)
