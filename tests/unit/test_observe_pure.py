"""Pure parts of observability: the analytics' reading of events and latency
percentiles, and the `saga show` timeline's durations."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from helpers import checkout_event
from hypothesis import given
from hypothesis import strategies as st

from analytics import stats
from checkout_saga.cli.observe import duration, timeline


def event(type_: str, data: dict[str, object], id_: str = "e1") -> bytes:
    return json.dumps({"specversion": "1.0", "id": id_, "type": type_, "source": "s",
                       "subject": "cs-1", "time": "2026-11-25T10:00:00Z", "data": data}).encode()


def test_events_become_facts_and_garbage_becomes_nothing() -> None:
    req = stats.parse("checkout.requested", checkout_event("cs-1", [("B", 1, 5), ("A", 2, 5)]), 10.0)
    assert req == stats.Requested("cs-1", ("A", "B"), 10.0)
    failed = stats.parse("checkout.results", event("CheckoutFailed", {
        "checkout_session_id": "cs-1", "reason": "OUT_OF_STOCK", "detail": "x"}), 11.0)
    assert failed == stats.Finished("cs-1", "FAILED", "OUT_OF_STOCK", 11.0)
    ok = stats.parse("checkout.results", event("CheckoutSucceeded", {"checkout_session_id": "cs-1"}), 12.0)
    assert ok == stats.Finished("cs-1", "SUCCEEDED", None, 12.0)
    shipped = stats.parse("orders.events", event("OrderShipped", {"order_id": "o", "checkout_session_id": "cs-1"},
                                                 "e9"), 13.0)
    assert shipped == stats.OrderEvent("cs-1", "e9", "OrderShipped", 13.0)
    for topic, raw in (("checkout.results", b"{nope"), ("checkout.results", None),
                       ("checkout.results", event("Unknown", {})),
                       ("checkout.requested", event("CheckoutSucceeded", {"checkout_session_id": "x"})),
                       ("checkout.results", event("CheckoutFailed", {}))):
        assert stats.parse(topic, raw, 1.0) is None


def test_percentiles_interpolate_inside_buckets() -> None:
    hist: dict[str, int] = {}
    for seconds in [0.05] * 50 + [0.3] * 45 + [3.0] * 5:
        hist = stats.with_sample(hist, seconds)
    assert sum(hist.values()) == 100
    p50, p95, p99 = (stats.percentile(hist, q) for q in (0.5, 0.95, 0.99))
    assert p50 is not None and p95 is not None and p99 is not None
    assert 0.025 < p50 <= 0.05 and 0.25 < p95 <= 0.4 and 2.5 < p99 <= 4.0
    assert stats.percentile({}, 0.5) is None
    assert stats.merged([hist, hist])[stats.bucket_of(0.05)] == 100


@given(st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=200))
def test_a_percentile_lies_between_the_buckets_of_the_smallest_and_largest_sample(
    samples: list[float],
) -> None:
    hist: dict[str, int] = {}
    for s in samples:
        hist = stats.with_sample(hist, s)
    bounds = (0.0, *stats.LATENCY_BOUNDS)
    low_bucket, high_bucket = int(stats.bucket_of(min(samples))), int(stats.bucket_of(max(samples)))
    low, high = bounds[low_bucket], bounds[high_bucket + 1]
    if math.isinf(high):
        high = bounds[high_bucket]
    last = None
    for q in (0.01, 0.5, 0.95, 0.99, 1.0):
        p = stats.percentile(hist, q)
        assert p is not None and low - 1e-9 <= p <= high + 1e-9
        assert last is None or p >= last - 1e-9  # monotone in q
        last = p


def test_series_totals_and_rates() -> None:
    outcomes = {("SUCCEEDED", 60.0): 3, ("FAILED", 60.0): 1, ("SUCCEEDED", 120.0): 2, ("FAILED", 0.0): 9}
    assert stats.series(outcomes, since=60) == [
        {"start": 60.0, "succeeded": 3, "failed": 1, "conversion": 0.75},
        {"start": 120.0, "succeeded": 2, "failed": 0, "conversion": 1.0},
    ]
    filled = stats.series(outcomes, since=60, window=60, until=250)
    assert [(r["start"], r["succeeded"], r["conversion"]) for r in filled] == [
        (60.0, 3, 0.75), (120.0, 2, 1.0), (180.0, 0, None), (240.0, 0, None)]
    assert stats.totals(outcomes, since=0) == {"FAILED": 10, "SUCCEEDED": 5}
    assert stats.rate_per_minute(5, 10) == 30.0


def test_the_timeline_shows_time_since_start_since_the_last_entry_and_per_step() -> None:
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def at(ms: int) -> str:
        return (t0 + timedelta(milliseconds=ms)).isoformat()

    rows = timeline([
        {"at": at(0), "step": "-", "kind": "started", "detail": ""},
        {"at": at(0), "step": "reserve_stock", "kind": "command", "detail": ""},
        {"at": at(40), "step": "reserve_stock", "kind": "succeeded", "detail": ""},
        {"at": at(40), "step": "authorize_payment", "kind": "command", "detail": ""},
        {"at": at(2040), "step": "authorize_payment", "kind": "timeout", "detail": ""},
        {"at": at(2050), "step": "reserve_stock", "kind": "command", "detail": ""},
        {"at": at(2100), "step": "reserve_stock", "kind": "compensated", "detail": ""},
    ])
    assert [r.elapsed for r in rows] == pytest.approx([0, 0, 0.04, 0.04, 2.04, 2.05, 2.1])
    assert [r.delta for r in rows] == pytest.approx([0, 0, 0.04, 0, 2.0, 0.01, 0.05])
    assert [r.took for r in rows][2] == pytest.approx(0.04)
    assert rows[4].took is None  # a timeout is not an answer
    assert rows[6].took == pytest.approx(0.05)  # from the compensation's own command
    assert (duration(0.04), duration(2.5), duration(125)) == ("40 ms", "2.50 s", "2m 05.0s")
