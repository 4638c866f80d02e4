"""Prometheus metrics of a worker process: the registry, the metrics and the
hooks the shared code calls. The HTTP server that serves them (with
``/healthz`` and ``/readyz``) is ``checkout_saga.metrics_server``.

Only the generic series live here (messages handled, retries, dead letters,
outbox, consumer lag, readiness); the saga's are in ``saga.metrics`` and
inventory's in ``services.inventory.metrics``, on this registry. Metric names
are listed in docs/architecture.md. Figures are per process; sum them across
processes (gauges sampled by every timers process, like
``checkout_holds_live``, are the same figure: take the max).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from messaging import dlq_headers
from schemas.contract import dlq_source, is_dlq_topic

log = logging.getLogger(__name__)

# The *_created series only double what a scrape has to read.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# ---- messaging (every consumer loop and outbox relay) ------------------------------
HANDLED = Counter("checkout_messages_handled", "Messages handled, by worker and topic.",
                  ["worker", "topic"], registry=REGISTRY)
HANDLE_SECONDS = Histogram("checkout_message_handle_seconds",
                           "Time to handle one message (successful attempts), by worker.",
                           ["worker"], buckets=_FAST_BUCKETS, registry=REGISTRY)
RETRIES = Counter("checkout_message_retries",
                  "Transient failures retried with backoff, by worker and topic.",
                  ["worker", "topic"], registry=REGISTRY)
LANES = Counter("checkout_consumer_lanes",
                "Lanes (many messages, one transaction) by worker and how they ended: "
                "committed, or one_by_one after the lane failed as a whole.",
                ["worker", "result"], registry=REGISTRY)
DEAD_LETTERS = Counter("checkout_dead_letters",
                       "Messages sent to a dead-letter topic, by source topic and stage "
                       "(handle, parse, compensation, retries, outbox).", ["topic", "stage"],
                       registry=REGISTRY)
DEAD_LETTERS_TRUNCATED = Counter("checkout_dead_letters_truncated",
                                 "Dead letters sent as a truncated copy (the original would not "
                                 "fit the producer's message.max.bytes), by source topic.",
                                 ["topic"], registry=REGISTRY)
DEAD_LETTERS_LOST = Counter("checkout_dead_letters_lost",
                            "Dead letters the broker refused even without their value, dropped "
                            "(logged as errors), by source topic.", ["topic"], registry=REGISTRY)
RETRIES_EXHAUSTED = Counter("checkout_message_retries_exhausted",
                            "Messages dead-lettered after their transient failures outlasted the "
                            "retry budget while other messages succeeded, by worker and topic.",
                            ["worker", "topic"], registry=REGISTRY)
OUTBOX_QUARANTINED = Counter("checkout_outbox_quarantined",
                             "Outbox rows the broker refused for good, moved to "
                             "<schema>.outbox_quarantine, by schema.", ["schema"], registry=REGISTRY)
CONSUMER_LAG = Gauge("checkout_consumer_lag_messages",
                     "Approximate consumer lag (high watermark minus committed offset) from "
                     "librdkafka statistics; approximate: the embedded broker's high watermark "
                     "is unreliable.", ["worker", "topic", "partition"], registry=REGISTRY)
OUTBOX_PUBLISHED = Counter("checkout_outbox_published", "Outbox rows published, by schema.",
                           ["schema"], registry=REGISTRY)
OUTBOX_LAG = Gauge("checkout_outbox_lag_seconds",
                   "Age of the oldest outbox row at the relay's last pass (0: empty), by schema.",
                   ["schema"], registry=REGISTRY)
OUTBOX_DELAY = Histogram("checkout_outbox_delay_seconds",
                         "From the transaction that wrote an outbox row to its publication.",
                         ["schema"], buckets=_FAST_BUCKETS, registry=REGISTRY)

# ---- the worker -------------------------------------------------------------------
READY = Gauge("checkout_worker_ready", "1 once the worker's consumers are built.",
              registry=REGISTRY)


# ---- hooks ----------------------------------------------------------------------


_HANDLED_CHILDREN: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_handled(worker: str, topic: str, seconds: float) -> None:
    # Label lookups cost more than the increments: keep the children.
    children = _HANDLED_CHILDREN.get((worker, topic))
    if children is None:
        children = (HANDLED.labels(worker, topic), HANDLE_SECONDS.labels(worker))
        _HANDLED_CHILDREN[(worker, topic)] = children
    children[0].inc()
    children[1].observe(seconds)


def count_dead_letters(messages: Iterable[Any]) -> None:
    """Count outgoing messages bound for a ``.dlq`` topic (outbox rows)."""
    for m in messages:
        if is_dlq_topic(m.topic):
            headers = m.headers or {}
            DEAD_LETTERS.labels(headers.get(dlq_headers.SOURCE_TOPIC, dlq_source(m.topic)),
                                headers.get(dlq_headers.STAGE, "handle")).inc()


def observe_outbox(schema: str, ages: Sequence[float]) -> None:
    if ages:
        OUTBOX_PUBLISHED.labels(schema).inc(len(ages))
        for age in ages:
            OUTBOX_DELAY.labels(schema).observe(max(0.0, age))
    OUTBOX_LAG.labels(schema).set(max(ages, default=0.0))


def lag_statistics(worker: str, interval_ms: int = 5000) -> dict[str, Any]:
    """Consumer settings that make librdkafka report lag every ``interval_ms``."""

    def on_stats(raw: str) -> None:
        try:
            stats = json.loads(raw)
            for topic, tdata in stats.get("topics", {}).items():
                for part, pdata in tdata.get("partitions", {}).items():
                    if part == "-1":
                        continue
                    lag = pdata.get("consumer_lag", -1)
                    if lag >= 0:
                        CONSUMER_LAG.labels(worker, topic, part).set(lag)
                    else:
                        with contextlib.suppress(KeyError):
                            CONSUMER_LAG.remove(worker, topic, part)
        except (ValueError, AttributeError, TypeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)

    return {"statistics.interval.ms": interval_ms, "stats_cb": on_stats}
