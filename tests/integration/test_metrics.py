"""Prometheus metrics and the health endpoints of a real worker process (the
session's `checkout-saga up`), read over HTTP as Prometheus and a probe would."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import poll_until
from helpers import Bus, checkout_event, cli, uid
from prometheus_client.parser import text_string_to_metric_families

from checkout_saga.metrics_server import MetricsServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def worker_metrics_url(workers) -> str:  # type: ignore[no-untyped-def]
    """The URL the worker wrote to <data dir>/metrics/<pid>.json (it asked for a free port)."""
    path = Path(workers.stack.env["CHECKOUT_DATA_DIR"]) / "metrics" / f"{workers.procs[0].pid}.json"
    assert poll_until(path.exists, 10), f"no {path}"
    return str(json.loads(path.read_text())["url"])


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(base: str) -> Samples:
    status, _, text = get(base + "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every label set that includes ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_worker_serves_metrics_liveness_and_readiness(workers) -> None:  # type: ignore[no-untyped-def]
    base = worker_metrics_url(workers)
    status, ctype, text = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("checkout_sagas_started_total", "checkout_messages_handled_total",
                 "checkout_outbox_published_total", "checkout_holds_live", "process_cpu_seconds_total"):
        assert name in text, name
    assert get(base + "/healthz")[0] == 200
    assert get(base + "/readyz")[:1] == (200,)
    assert value(scrape(base), "checkout_worker_ready") == 1
    assert get(base + "/nope")[0] == 404


def test_metrics_follow_checkouts_steps_compensations_and_dead_letters(
    workers, bus: Bus, env  # type: ignore[no-untyped-def]
) -> None:
    base = worker_metrics_url(workers)
    sku = uid("MET")
    cli(env, "stock", "set", sku, "--price", "300", "--quantity", "10")
    before = scrape(base)
    ok, declined, slow = uid("met-ok"), uid("met-declined"), uid("met-timeout")
    bus.send("checkout.requested", ok, checkout_event(ok, [(sku, 1, 300)]))
    bus.send("checkout.requested", declined, checkout_event(declined, [(sku, 1, 300)], "tok_chargeDeclined"))
    bus.send("checkout.requested", slow, checkout_event(slow, [(sku, 2, 300)], "tok_timeout"))
    bus.send("checkout.requested", uid("met-bad"), b"{not json")
    bus.flush()

    # A timed-out payment holds its stock until the deadline: the sampled gauge sees it.
    assert poll_until(lambda: value(scrape(base), "checkout_holds_live") >= 1, 10), \
        "checkout_holds_live never counted the pending checkout's hold"
    assert bus.result(ok)["type"] == "CheckoutSucceeded"
    assert bus.result(declined)["data"]["reason"] == "PAYMENT_DECLINED"
    assert bus.result(slow)["data"]["reason"] == "PAYMENT_TIMEOUT"

    def grew(name: str, by: float = 1, **labels: str) -> Callable[[], bool]:
        return lambda: total(scrape(base), name, **labels) - total(before, name, **labels) >= by

    checks = {
        "started": grew("checkout_sagas_started_total", 3),
        "succeeded": grew("checkout_sagas_succeeded_total"),
        "declined": grew("checkout_sagas_failed_total", reason="PAYMENT_DECLINED"),
        "timeout": grew("checkout_sagas_failed_total", reason="PAYMENT_TIMEOUT"),
        "step timeout": grew("checkout_saga_step_timeouts_total", step="authorize_payment"),
        "compensations": grew("checkout_saga_compensations_total", 2, step="reserve_stock"),
        "void": grew("checkout_saga_compensations_total", step="authorize_payment"),
        "confirm timed": grew("checkout_saga_step_duration_seconds_count", step="confirm_order",
                              outcome="succeeded"),
        "payment failed timed": grew("checkout_saga_step_duration_seconds_count",
                                     step="authorize_payment", outcome="failed"),
        "compensation timed": grew("checkout_saga_step_duration_seconds_count", 2,
                                   step="reserve_stock", outcome="compensated"),
        "dead letter": grew("checkout_dead_letters_total", topic="checkout.requested", stage="parse"),
        "handled": grew("checkout_messages_handled_total", 4, worker="coordinator",
                        topic="checkout.requested"),
        "commands handled": grew("checkout_messages_handled_total", 3, worker="inventory"),
        "outbox": grew("checkout_outbox_published_total", 6, schema="saga"),
    }
    assert poll_until(lambda: all(check() for check in checks.values()), 10), \
        [name for name, check in checks.items() if not check()]

    after = scrape(base)

    def lag_series() -> list[float]:
        return [v for (n, labels), v in scrape(base).items()
                if n == "checkout_consumer_lag_messages" and ("worker", "coordinator") in labels]

    # librdkafka's statistics give a lag figure per owned partition (approximate on tansu).
    assert poll_until(lag_series, 5), "no consumer lag reported"
    assert all(v >= 0 for v in lag_series())
    assert ("checkout_outbox_lag_seconds", (("schema", "saga"),)) in after
    assert total(after, "checkout_outbox_delay_seconds_count", schema="saga") >= 6


def test_readiness_waits_for_the_runtime_and_liveness_for_the_loop() -> None:
    ready = {"now": False}
    alive = {"now": True}
    server = MetricsServer("127.0.0.1", 0, lambda: ready["now"], lambda: alive["now"]).start()
    try:
        assert get(server.url + "/readyz")[0] == 503
        assert get(server.url + "/healthz")[0] == 200
        ready["now"] = True
        assert get(server.url + "/readyz")[0] == 200
        alive["now"] = False  # the event loop stopped beating
        assert get(server.url + "/healthz")[0] == 503
        assert get(server.url + "/readyz")[0] == 503
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url + "/healthz", timeout=1)  # nothing left listening
