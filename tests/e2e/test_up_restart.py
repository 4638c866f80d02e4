"""`up` as the README runs it, with no URL set (issue 18).

- A second `up --role payment` beside a running `up` joins that stack through its
  endpoints file (it used to start a PostgreSQL of its own on the same data
  folder and die on `postmaster.pid`). The first `up` runs every role but
  payment, so a checkout that succeeds was paid for by the joined process.
- After Ctrl-C and a new `up`, the broker still holds what it held (Apache Kafka
  keeps its log in the data folder), so `verify` passes and the dead letters,
  results and OrderConfirmed events of before the restart are all there.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from helpers import cli, stop_process
from ops_helpers import FAST, URL_VARS

from checkout_saga.client import Cart, checkout_request
from checkout_saga.ops.chaos import PRICE, seed, settings_from
from checkout_saga.runtime import ROLES

START_SECONDS = 120.0


def _up(env: dict[str, str], log: Path, *roles: str) -> subprocess.Popen[bytes]:
    args = [str(Path(sys.executable).with_name("checkout-saga")), "up"]
    for role in roles:
        args += ["--role", role]
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(predicate, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + START_SECONDS
    while not predicate():
        assert proc.poll() is None, f"`up` exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {START_SECONDS} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_a_split_role_up_joins_and_a_restarted_up_keeps_verify_true(own_workdir: Path) -> None:
    data = own_workdir / "data"
    env = {**{k: v for k, v in os.environ.items()
              if k not in URL_VARS and not k.endswith("_DATABASE_URL")},
           **FAST, "CHECKOUT_DATA_DIR": str(data)}
    endpoints_file = data / "endpoints.json"
    first_log, joined_log, again_log = (own_workdir / f"{n}.log" for n in ("first", "joined", "again"))
    not_payment = [role for role in ROLES if role != "payment"]
    run = f"up{random.randrange(10**6)}"
    first = _up(env, first_log, *not_payment)
    joined = again = None
    try:
        _wait_for(endpoints_file.exists, "endpoints file", first, first_log)
        found = json.loads(endpoints_file.read_text())
        settings = settings_from({"KAFKA_BOOTSTRAP_SERVERS": found["kafka_bootstrap_servers"],
                                  "DATABASE_URL": found["database_url"],
                                  "REDIS_URL": found["redis_url"]})
        joined = _up(env, joined_log, "payment")
        _wait_for(lambda: "nothing embedded started" in joined_log.read_text(),
                  "notice that it joined", joined, joined_log)

        asyncio.run(seed(settings, run))
        sessions = [f"{run}-{i}" for i in range(5)]
        cart = Cart(settings)
        try:
            for sid in sessions:
                cart.send(sid, checkout_request(sid, [(f"CH-{run}-0", 1, PRICE)]))
            cart.flush()
            results = cart.results(sessions, 90)
        finally:
            cart.close()
        assert {sid: r["type"] for sid, r in results.items()} == dict.fromkeys(
            sessions, "CheckoutSucceeded"), f"joined payment worker log:\n{joined_log.read_text()[-3000:]}"
        assert "postmaster.pid" not in joined_log.read_text()

        stop_process(joined)
        stop_process(first)
        assert first.returncode == 0 and joined.returncode == 0
        assert not endpoints_file.exists(), "the first `up` leaves no endpoints file behind"

        again = _up(env, again_log)
        _wait_for(endpoints_file.exists, "endpoints file", again, again_log)
        after = f"{run}-after"
        cart = Cart(settings_from({"KAFKA_BOOTSTRAP_SERVERS": json.loads(
            endpoints_file.read_text())["kafka_bootstrap_servers"]}))
        try:
            cart.send(after, checkout_request(after, [(f"CH-{run}-0", 1, PRICE)]))
            cart.flush()
            assert cart.results([after], 90)[after]["type"] == "CheckoutSucceeded"
        finally:
            cart.close()
        verified = cli(env, "verify", "--grace", "0", "--json", check=False)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        assert report["ok"] is True
        # the sagas of before the restart and the one after, every check run, none skipped
        assert report["figures"]["sagas_succeeded"] == len(sessions) + 1
        assert {c["status"] for c in report["checks"]} == {"ok"}
    finally:
        for proc in (joined, first, again):
            if proc is not None:
                stop_process(proc)
