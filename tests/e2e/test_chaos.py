"""Faults under load: killed workers, restarted PostgreSQL and Redis.

Each test runs on a stack of its own (broker, PostgreSQL and Redis that it may
restart) with worker processes of its own, so the session's shared stack is
never disturbed. The bigger run is `checkout-saga chaos --checkouts 2000
--kills 20` (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from checkout_saga.client import Cart, checkout_request
from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.ops.chaos import (
    ChaosPlan,
    check_outcomes,
    outcome_of,
    plan_checkouts,
    run_chaos,
    seed,
    settings_from,
    wait_quiet,
)
from checkout_saga.ops.supervisor import Supervisor, settings_env
from checkout_saga.ops.verify import VerifyOptions, verify
from checkout_saga.runtime import prepare

URL_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")


def base_env() -> dict[str, str]:
    # Two partitions, as the rest of the suite (conftest.py): one worker per role needs no more.
    return {**{k: v for k, v in os.environ.items() if k not in URL_VARS}, "CHECKOUT_PARTITIONS": "2"}


def failing_checks(verified: dict) -> list[dict]:  # type: ignore[type-arg]
    return [c for c in verified["checks"] if c["status"] not in ("ok", "skipped")]


def test_chaos_storm_every_saga_ends_and_the_guarantees_hold(own_workdir: Path) -> None:
    plan = ChaosPlan(checkouts=100, kills=4, per_role=1, postgres_restarts=1, redis_restarts=1,
                     duration=6.0, seed=11, result_timeout=90.0)
    report = run_chaos(own_workdir, plan, base_env())
    figures = {k: v for k, v in report.as_json().items() if k not in ("verify", "wrong")}
    (own_workdir / "chaos-report.json").write_text(json.dumps(report.as_json(), indent=2))
    sys.stderr.write(f"\nchaos figures: {json.dumps(figures)}\n")
    if failing_checks(report.verify):  # the breaches themselves, for whoever reads a failure
        sys.stderr.write(json.dumps(failing_checks(report.verify), indent=1) + "\n")

    assert report.missing == 0, f"no result for {report.missing_sessions}"
    assert report.wrong == []
    assert report.kills == plan.kills and report.restarts >= plan.kills
    assert (report.postgres_restarts, report.redis_restarts) == (1, 1)
    assert failing_checks(report.verify) == [] and report.verify["ok"]
    assert report.verify["figures"]["sagas_running"] == 0
    assert report.verify["figures"]["sagas_compensating"] == 0
    # Every kind of ending happened under the faults.
    assert {"ok", "INVALID_REQUEST", "UNKNOWN_SKU", "PRICE_CHANGED", "PAYMENT_TIMEOUT",
            "PROMO_INVALID", "OUT_OF_STOCK"} <= set(report.outcomes)


def test_a_worker_rides_out_postgres_and_redis_restarts_under_load(own_workdir: Path) -> None:
    """One process with every role: it must reconnect by itself (it is never restarted)."""
    tmp_path = own_workdir
    stack = EmbeddedStack(tmp_path / "stack")
    found = stack.start()
    urls = settings_env(found.kafka_bootstrap, found.database_url, found.redis_url,
                        stack.client_settings)
    timeouts = {"CHECKOUT_PAYMENT_TIMEOUT_SECONDS": "3", "CHECKOUT_STEP_TIMEOUT_SECONDS": "3",
                "CHECKOUT_GATEWAY_LATE_ANSWER_SECONDS": "1"}
    env = {**base_env(), **urls, **timeouts, "CHECKOUT_DATA_DIR": str(tmp_path / "data")}
    settings = settings_from(urls | timeouts)
    log = tmp_path / "worker.log"
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    with log.open("ab") as out:
        worker = subprocess.Popen([exe, "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        run = "pgr" + str(random.randrange(10**6))
        asyncio.run(prepare(settings))  # the worker migrates too; whoever is first does it
        asyncio.run(seed(settings, run))
        cart = Cart(settings)
        try:
            warm = f"chaos-{run}-warm"
            cart.send(warm, checkout_request(warm, [(f"CH-{run}-0", 1, 1999)]))
            cart.flush()
            assert warm in cart.results([warm], 90.0), log.read_text(errors="replace")[-3000:]
            checkouts = plan_checkouts(50, run, random.Random(5))
            restarts = {15: stack.restart_postgres, 25: stack.restart_redis,
                        35: stack.restart_postgres}
            for i, c in enumerate(checkouts):
                cart.send(c.session, c.payload)
                if c.repeat:
                    cart.send(c.session, c.payload)
                if i in restarts:
                    cart.flush()
                    restarts[i]()
                time.sleep(0.04)
            cart.flush()
            results = cart.results([c.session for c in checkouts], 90.0)
        finally:
            cart.close()
        assert worker.poll() is None, "the worker died: it should have reconnected"
        assert len(results) == len(checkouts), sorted({c.session for c in checkouts} - set(results))
        assert check_outcomes(checkouts, results) == []
        asyncio.run(wait_quiet(settings, 60.0))
        report = asyncio.run(verify(settings, VerifyOptions(grace=1.0)))
        assert report.ok, failing_checks(report.as_json())
        assert sum(1 for e in results.values() if outcome_of(e) == "ok") > 10
        # The restarts really hit it mid-work: it logged connection trouble and went
        # on, and dead-lettered nothing (a good message lost to a lost connection).
        text = log.read_text(errors="replace")
        assert "shutting down" in text or "Connection refused" in text or "closed" in text
        assert "dead-lettering" not in text
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        stack.stop()


def test_the_supervisor_restarts_a_killed_worker_and_stops_them_all(tmp_path: Path) -> None:
    # A stand-in worker: it only has to live until told to stop.
    stand_in = ("import signal, sys, time; "
                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(600)")
    command = [sys.executable, "-c", stand_in]
    sup = Supervisor(["a", "b"], 1, dict(os.environ), tmp_path / "logs",
                     command=command, min_backoff=0.05, stable_after=0.5)
    stop = threading.Event()
    watcher = threading.Thread(target=sup.run, args=(stop,))
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while len(sup.pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = sup.pids()
        killed = sup.kill_one(random.Random(1), role="a")
        assert killed is not None and killed.role == "a"
        while (sup.pids().get("a-0") in (None, before["a-0"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = sup.pids()
        assert after["a-0"] != before["a-0"] and after["b-0"] == before["b-0"]
        assert sup.restarts == 1 and killed.exits == [-signal.SIGKILL]
    finally:
        stop.set()
        watcher.join(30)
    assert sup.pids() == {}
    # Stopped by SIGTERM (a child still starting may not have its handler yet).
    assert all(c.proc is not None and c.proc.returncode in (0, -signal.SIGTERM)
               for c in sup.children)
