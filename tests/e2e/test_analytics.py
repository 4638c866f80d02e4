"""The analytics app (`checkout-saga analytics`, faust) over real checkouts:
its windowed tables, the hot-SKU mark it gives inventory, the live dashboard
as headless Chromium renders it, and its tables after a restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import poll_until
from helpers import Bus, checkout_event, cli, cli_json, uid

from checkout_saga.embedded.stack import free_port

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
HOT_REQUESTS = 12


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium): the dashboard check needs it")
    return found


class AnalyticsApp:
    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.env = {**env, "CHECKOUT_ANALYTICS_ID": uid("analytics"),
                    "CHECKOUT_ANALYTICS_PORT": str(self.port),
                    # 5 requests naming a SKU inside one 10 s window make it hot.
                    "CHECKOUT_ANALYTICS_HOT_PER_MINUTE": "30",
                    "CHECKOUT_ANALYTICS_STUCK_AFTER_SECONDS": "0.3"}
        self.log = workdir / f"{self.env['CHECKOUT_ANALYTICS_ID']}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = str(Path(sys.executable).with_name("checkout-saga"))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([exe, "analytics"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        assert poll_until(lambda: self.get("/healthz") is not None, 60), self.tail()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            return None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def analytics(env, stack, tmp_path: Path):  # type: ignore[no-untyped-def]
    app = AnalyticsApp(env, tmp_path)
    app.start()
    yield app
    app.stop()


def test_analytics_tables_hot_skus_dashboard_and_restart(
    workers, bus: Bus, env, analytics: AnalyticsApp, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    browser = chromium()
    hot, cold = uid("HOTAN"), uid("COLDAN")
    cli(env, "stock", "set", hot, "--price", "100", "--quantity", "100")
    cli(env, "stock", "set", cold, "--price", "700", "--quantity", "100")

    # A checkout waiting on a gateway that never answers shows as stuck meanwhile.
    slow = uid("an-slow")
    bus.send("checkout.requested", slow, checkout_event(slow, [(cold, 1, 700)], "tok_timeout"))
    bus.flush()
    assert poll_until(lambda: any(r["checkout_session_id"] == slow
                                  for r in (analytics.get("/api/summary") or {}).get("stuck") or ()), 10), \
        "the waiting saga never showed as stuck"

    sessions = [uid("an-hot") for _ in range(HOT_REQUESTS)]
    for sid in sessions:
        bus.send("checkout.requested", sid, checkout_event(sid, [(hot, 1, 100)]))
    declined = [uid("an-declined") for _ in range(2)]
    for sid in declined:
        bus.send("checkout.requested", sid, checkout_event(sid, [(cold, 1, 700)], "tok_chargeDeclined"))
    unknown = uid("an-unknown")
    bus.send("checkout.requested", unknown, checkout_event(unknown, [(uid("NOSUCH"), 1, 1)]))
    bus.flush()
    results = bus.wait_for("checkout.results", [*sessions, *declined, unknown, slow], 60)
    assert all(results.values()), [s for s, r in results.items() if not r]

    def seen() -> dict[str, Any] | None:
        s = analytics.get("/api/summary")
        sku = analytics.get(f"/api/sku/{hot}")
        if not s or not sku or sku["requests"] < HOT_REQUESTS or not sku["hot"]:
            return None
        reasons = s["reasons"]
        if not all(reasons.get(r) for r in ("PAYMENT_DECLINED", "UNKNOWN_SKU", "PAYMENT_TIMEOUT")):
            return None
        if s["totals"].get("SUCCEEDED", 0) < HOT_REQUESTS or s["latency"]["count"] < HOT_REQUESTS:
            return None
        return {"summary": s, "sku": sku}

    got = poll_until(seen, 30)
    assert got, f"{analytics.get('/api/summary')}\n{analytics.get(f'/api/sku/{hot}')}\n{analytics.tail()}"
    summary, sku = got["summary"], got["sku"]
    assert sku["requests"] == HOT_REQUESTS  # each request counted once
    assert summary["order_events"].get("OrderConfirmed", 0) >= HOT_REQUESTS
    assert summary["series"] and summary["series"][-1]["conversion"] is not None
    assert 0 < summary["latency"]["p50"] <= summary["latency"]["p99"]
    # The mark reached inventory: the SKU is hot there now.
    assert poll_until(lambda: cli_json(env, "stock", "show", hot)["hot"], 5)

    # The dashboard, as a browser renders it: charts drawn from real data.
    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=4000", "--dump-dom", analytics.url + "/"],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout
    assert 'data-loaded="true"' in dom, dom[-2000:]
    ok_bars = [int(n) for n in re.findall(r'class="bar bar-succeeded" data-count="(\d+)"', dom)]
    assert sum(ok_bars) >= HOT_REQUESTS, ok_bars
    for reason in ("PAYMENT_DECLINED", "UNKNOWN_SKU", "PAYMENT_TIMEOUT"):
        assert re.search(rf'class="reason" data-count="[1-9]\d*" data-reason="{reason}"', dom), reason
    assert f'data-sku="{hot}"' in dom  # in the hot SKUs table
    assert "conversion-point" in dom

    # Restart: the tables come back from their changelogs, not from re-reading
    # the topics, and the hot mark keeps the time it was made.
    before = analytics.get("/api/summary")
    analytics.stop()
    analytics.start()
    assert poll_until(lambda: (analytics.get(f"/api/sku/{hot}") or {}).get("requests") == HOT_REQUESTS, 30), \
        f"{analytics.get(f'/api/sku/{hot}')}\n{analytics.tail()}"
    after = analytics.get(f"/api/sku/{hot}")
    assert after["hot"] == sku["hot"]
    restored = analytics.get("/api/summary")
    assert restored["totals"].get("SUCCEEDED", 0) >= before["totals"]["SUCCEEDED"]
    assert restored["processed_since_start"] < before["processed_since_start"]

    # And it goes on counting from where it was.
    more = uid("an-after")
    bus.send("checkout.requested", more, checkout_event(more, [(hot, 1, 100)]))
    bus.flush()
    assert poll_until(lambda: (analytics.get(f"/api/sku/{hot}") or {}).get("requests") == HOT_REQUESTS + 1, 20)
