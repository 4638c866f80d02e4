"""`checkout-saga bench` end to end on an embedded stack of its own: a short
fixed-rate run in the default layout (the coordinator apart from the services)
must answer every checkout and end with its guarantee checks passed."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import cli_json

# No server of the session's stack: the bench starts its own.
URL_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL", "INVENTORY_DATABASE_URL",
            "PAYMENT_DATABASE_URL", "ORDERS_DATABASE_URL", "SAGA_DATABASE_URL")

def test_bench_answers_every_checkout_and_checks_the_guarantees(own_workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    env["CHECKOUT_DATA_DIR"] = str(own_workdir)
    report = cli_json(env, "bench", "--duration", "2", "--rate", "20")
    assert report["layout"] == "split"
    assert report["processes_per_worker"] == [
        ["coordinator", "timers"], ["inventory", "payment", "orders", "promotions"]]
    (run,) = report["runs"]
    assert run["checkouts"] == run["completed"] >= 30
    assert run["guarantees"] == {"oversold_skus": 0, "holds_left": 0, "sagas_not_terminal": 0,
                                 "results_missing": 0, "ok": True}
    assert run["outcomes"].get("CheckoutSucceeded", 0) > 0
    assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    assert report["baseline"]["postgres_checkout_equivalents_per_s"] > 0
