"""A forward step whose command its service dead-letters is not re-sent forever.

On a stack of its own (short step timeout, three sends): the promotions
service cannot handle one checkout's ApplyPromo (its usage table refuses the
session, as a bad migration would), so it dead-letters every copy and never
replies. The saga sends it three times, gives up, gives the promo's gate entry
back (ReleasePromo) and answers the cart CheckoutFailed INVALID_REQUEST; then
nothing more is sent, and `verify` finds every guarantee holding.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio
from helpers import Bus, checkout_event, uid
from ops_helpers import OwnStack

from services.promotions.redis_gate import keys

ATTEMPTS = 3
ENV = {"CHECKOUT_STEP_TIMEOUT_SECONDS": "0.5", "CHECKOUT_STEP_MAX_ATTEMPTS": str(ATTEMPTS)}


def gate_holds(url: str, code: str, sid: str) -> bool:
    async def go() -> bool:
        client = redis.asyncio.from_url(url)
        try:
            return await client.zscore(keys(code)[1], sid) is not None
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_a_dead_lettered_apply_promo_is_sent_three_times_then_the_checkout_fails(
    own_workdir: Path,
) -> None:
    with OwnStack(own_workdir, ENV) as own:
        sku, sid, warm, code = uid("SKU-GU"), uid("cs-gu"), uid("cs-warm"), uid("GU").upper()
        own.cli("stock", "set", sku, "--price", "1000", "--quantity", "5")
        own.cli("promo", "create", code, "--percent-off", "10", "--max-uses", "5")
        own.sql(f"ALTER TABLE promotions.usages ADD CONSTRAINT refuse_one "
                f"CHECK (checkout_session_id <> '{sid}') NOT VALID")
        own.start()
        bus = Bus(own.bootstrap)
        try:
            bus.send("checkout.requested", warm, checkout_event(warm, [(sku, 1, 1000)]))
            bus.flush()
            assert bus.result(warm, 90)["type"] == "CheckoutSucceeded"

            bus.send("checkout.requested", sid,
                     checkout_event(sid, [(sku, 1, 1000)], promo_code=code))
            bus.flush()
            result = bus.result(sid, 60)
            assert (result["type"], result["data"]["reason"]) == ("CheckoutFailed",
                                                                  "INVALID_REQUEST")
            assert f"ApplyPromo got no answer after {ATTEMPTS} attempts" in result["data"]["detail"]

            time.sleep(4)  # several step timeouts: nothing is sent any more
            dead = [r for r in bus.poll("saga.promotions.commands.dlq", 1) if r["key"] == sid]
            assert [r["value"]["type"] for r in dead] == ["ApplyPromo"] * ATTEMPTS
            assert len(bus.events_for("checkout.results", sid)) == 1
        finally:
            bus.close()
        steps = own.sql("SELECT step, kind FROM saga.step_log WHERE checkout_session_id = $1 "
                        "ORDER BY id", sid)
        kinds = [(s["step"], s["kind"]) for s in steps]
        assert ("apply_promo", "gave-up") in kinds and ("apply_promo", "compensated") in kinds
        assert not gate_holds(own.env["REDIS_URL"], code, sid), "the gate kept the session's use"
        assert own.sql("SELECT available, held, sold FROM inventory.products WHERE sku = $1",
                       sku) == [{"available": 4, "held": 0, "sold": 1}]  # the warm-up's unit
        own.invoke("verify", "--grace", "1")
