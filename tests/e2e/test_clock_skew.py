"""A worker whose clock is off by a minute fails no checkout.

A real `checkout-saga up` (every role) runs with its wall clock a minute
behind or ahead, on a stack of its own whose servers keep the true time. The
skew is set in the worker's Python (``skewed_clock/sitecustomize.py``: every
``time.time`` and ``datetime.now``), not with libfaketime: under libfaketime
(FAKETIME=-60s) librdkafka's first metadata request hung for over 60 s here.
Deadlines and hold expiries are fired by PostgreSQL's clock, so they must be
made on it too: a worker a minute behind that wrote `its now + 3 s` would see
every payment time out and every hold expire at once; a minute ahead, a
payment timeout would fire a minute late.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import Bus, checkout_event, uid
from ops_helpers import OwnStack

SKEWED_CLOCK = Path(__file__).with_name("skewed_clock")
ENV = {
    "CHECKOUT_HOLD_TTL_SECONDS": "30",  # shorter than the skew
    "CHECKOUT_PAYMENT_TIMEOUT_SECONDS": "3",
    "CHECKOUT_GATEWAY_LATE_ANSWER_SECONDS": "1",
    # Timers that look often: a deadline or expiry made due at once by a
    # skewed clock is fired before the answer it should have waited for.
    "CHECKOUT_TIMER_INTERVAL_SECONDS": "0.02",
    "CHECKOUT_SWEEP_INTERVAL_SECONDS": "0.05",
}
CHECKOUTS = 12


def worker_clock_offset(log: Path) -> float:
    """How far the worker's wall clock is from ours, from its first log line."""
    for line in log.read_text(errors="replace").splitlines():
        try:
            stamp = datetime.fromisoformat(json.loads(line)["ts"])
        except (ValueError, KeyError, TypeError):
            continue
        return (stamp - datetime.now(UTC)).total_seconds()
    raise AssertionError(f"no JSON log line in {log}")


@pytest.mark.parametrize("skew", [-60, 60])
def test_a_worker_a_minute_off_fails_no_checkout(own_workdir: Path, skew: int) -> None:
    with OwnStack(own_workdir, ENV) as own:
        sku = uid("SKU-SKEW")
        own.cli("stock", "set", sku, "--price", "1000", "--quantity", str(CHECKOUTS + 10))
        path = os.pathsep.join(p for p in (str(SKEWED_CLOCK), own.env.get("PYTHONPATH")) if p)
        own.start(PYTHONPATH=path, CHECKOUT_TEST_CLOCK_SKEW_SECONDS=str(skew),
                  CHECKOUT_LOG_FORMAT="json")
        bus = Bus(own.bootstrap)
        try:
            warm = uid("cs-warm")  # may time out on a skewed clock: only the groups matter
            bus.send("checkout.requested", warm, checkout_event(warm, [(sku, 1, 1000)]))
            bus.flush()
            try:
                bus.result(warm, 90)
            except AssertionError:
                print((own.workdir / "worker-0.log").read_text(errors="replace")[-6000:])
                raise
            offset = worker_clock_offset(own.workdir / "worker-0.log")
            assert abs(offset - skew) < 10, f"the worker's clock is {offset:+.1f}s off"

            sids = [uid("cs-skew") for _ in range(CHECKOUTS)]
            for sid in sids:
                bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 1000)]))
            late = uid("cs-late")  # the gateway never answers in time
            sent = time.monotonic()
            bus.send("checkout.requested", late,
                     checkout_event(late, [(sku, 1, 1000)], token="tok_timeout"))
            bus.flush()
            found = bus.wait_for("checkout.results", sids, timeout=60)
            outcomes = {sid: [(e["type"], e["data"].get("reason")) for e in found[sid]]
                        for sid in sids}
            assert all(o == [("CheckoutSucceeded", None)] for o in outcomes.values()), outcomes
            timed_out = bus.result(late, timeout=30)
            took = time.monotonic() - sent
        finally:
            bus.close()
        assert (timed_out["type"], timed_out["data"].get("reason")) == (
            "CheckoutFailed", "PAYMENT_TIMEOUT"), timed_out
        assert took < 20, f"the 3 s payment timeout fired after {took:.0f}s"
        timeouts = own.sql("SELECT checkout_session_id, step, detail FROM saga.step_log "
                           "WHERE checkout_session_id = ANY($1::text[]) AND kind = 'timeout'", sids)
        assert timeouts == [], "a step timed out early"
        holds = own.sql("SELECT status, count(*) AS n FROM inventory.holds "
                        "WHERE checkout_session_id = ANY($1::text[]) GROUP BY status", sids)
        assert holds == [{"status": "COMMITTED", "n": CHECKOUTS}], "a hold expired early"
