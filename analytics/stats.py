"""Pure analytics: what an event on a watched topic means, latency histograms
and the dashboard's summary. No faust, Kafka or database import here: the
faust app (``analytics.app``) feeds these functions and stores what they
return in its tables.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.contract import CHECKOUT_REQUESTED, CHECKOUT_RESULTS, ORDERS_CONFIRMED, ORDERS_EVENTS

# Upper bounds (seconds) of the checkout latency buckets; a histogram is a
# dict {bucket index as str: count} so it is JSON in a faust table and two
# windows merge by adding.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 1.5, 2.5, 4.0, 6.0, 10.0, 20.0, 40.0, 60.0,
    120.0, math.inf,
)
SUCCEEDED, FAILED = "SUCCEEDED", "FAILED"


@dataclass(frozen=True)
class Requested:
    session_id: str
    skus: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class Finished:
    session_id: str
    outcome: str  # SUCCEEDED | FAILED
    reason: str | None
    at: float


@dataclass(frozen=True)
class OrderEvent:
    session_id: str
    event_id: str
    type: str
    at: float


Fact = Requested | Finished | OrderEvent


def _requested(data: Mapping[str, Any], event: Mapping[str, Any], at: float) -> Fact:
    skus = tuple(sorted({str(i["sku"]) for i in data.get("items") or () if "sku" in i}))
    return Requested(str(data["checkout_session_id"]), skus, at)


def _result(data: Mapping[str, Any], event: Mapping[str, Any], at: float) -> Fact:
    failed = event["type"] == "CheckoutFailed"
    reason = str(data.get("reason")) if failed else None
    return Finished(str(data["checkout_session_id"]), FAILED if failed else SUCCEEDED, reason, at)


def _order(data: Mapping[str, Any], event: Mapping[str, Any], at: float) -> Fact:
    session = data.get("checkout_session_id") or event.get("subject") or ""
    return OrderEvent(str(session), str(event["id"]), str(event["type"]), at)


# Which events of which topic mean what: dispatch by (topic, type).
_PARSERS = {
    (CHECKOUT_REQUESTED, "CheckoutRequested"): _requested,
    (CHECKOUT_RESULTS, "CheckoutSucceeded"): _result,
    (CHECKOUT_RESULTS, "CheckoutFailed"): _result,
    **{(ORDERS_CONFIRMED, t): _order for t in ("OrderConfirmed",)},
    **{(ORDERS_EVENTS, t): _order for t in (
        "OrderCancelled", "OrderShipped", "OrderDelivered", "ReturnInitiated", "OrderReturned",
        "OrderStatusChanged", "OrderRequestRejected",
    )},
}
WATCHED_TOPICS = (CHECKOUT_REQUESTED, CHECKOUT_RESULTS, ORDERS_CONFIRMED, ORDERS_EVENTS)


def parse(topic: str, raw: bytes | None, at: float) -> Fact | None:
    """The fact a CloudEvent states, or None for anything not worth counting
    (unknown type, malformed bytes: the analytics never stop a partition)."""
    try:
        event = json.loads(raw or b"")
        parser = _PARSERS.get((topic, event.get("type")))
        if parser is None or not isinstance(event.get("data"), dict):
            return None
        return parser(event["data"], event, at)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---- latency histograms ------------------------------------------------------


def bucket_of(seconds: float) -> str:
    return str(bisect_left(LATENCY_BOUNDS, max(0.0, seconds)))


def with_sample(hist: Mapping[str, int], seconds: float) -> dict[str, int]:
    out = dict(hist)
    key = bucket_of(seconds)
    out[key] = out.get(key, 0) + 1
    return out


def merged(hists: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for hist in hists:
        for key, count in hist.items():
            out[key] = out.get(key, 0) + int(count)
    return out


def percentile(hist: Mapping[str, int], q: float) -> float | None:
    """The q-quantile (0..1), interpolated inside its bucket; None when empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, upper in enumerate(LATENCY_BOUNDS):
        count = hist.get(str(i), 0)
        if count and seen + count >= rank:
            lower = LATENCY_BOUNDS[i - 1] if i else 0.0
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS[-2]


# ---- the dashboard's summary -------------------------------------------------

Windowed = Mapping[tuple[str, float], Any]  # (key, window start) -> value


def series(outcomes: Windowed, since: float, window: float | None = None,
           until: float | None = None) -> list[dict[str, Any]]:
    """Checkouts per window by outcome, and the conversion, oldest first. With
    ``window`` and ``until``, windows without a checkout count as zero from the
    first one with data, so the time axis has no holes."""
    starts = sorted({start for (_, start) in outcomes if start >= since})
    if starts and window and until is not None:
        last = max(starts[-1], until - until % window)
        steps = round((last - starts[0]) / window)
        starts = [starts[0] + i * window for i in range(steps + 1)]
    rows = []
    for start in starts:
        ok = int(outcomes.get((SUCCEEDED, start), 0))
        bad = int(outcomes.get((FAILED, start), 0))
        rows.append({"start": start, "succeeded": ok, "failed": bad,
                     "conversion": round(ok / (ok + bad), 4) if ok + bad else None})
    return rows


def totals(by_key: Windowed, since: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for (key, start), value in by_key.items():
        if start >= since:
            out[key] = out.get(key, 0) + int(value)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def latency(hists: Windowed, since: float) -> dict[str, Any]:
    hist = merged(v for (_, start), v in hists.items() if start >= since)
    p = {f"p{int(q * 100)}": percentile(hist, q) for q in (0.5, 0.95, 0.99)}
    return {"count": sum(hist.values()), **{k: None if v is None else round(v, 4)
                                             for k, v in p.items()}}


def rate_per_minute(count: int, window_seconds: float) -> float:
    return round(count * 60.0 / window_seconds, 2)
