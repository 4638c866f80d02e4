"""The faust wiring of the analytics app: one agent over the watched topics,
windowed tables, the hot-SKU mark and the dashboard's web views.

Why it is built this way:
- One agent reads ``checkout.requested``, ``checkout.results``,
  ``orders.confirmed`` and ``orders.events`` together. They are all keyed by
  session id with the same partition count, so a request and its result meet
  in one partition, in whichever order they are read.
- At least once (``processing_guarantee='at_least_once'``): aiokafka's
  idempotent producer does not work with the embedded broker, and an event
  seen twice is harmless here because the ``sessions`` table remembers which
  results and order events were already counted (a republished result keeps
  its session and its CloudEvents id, so it is not counted again either).
- Tables live in memory and are restored from their changelog topics after a
  restart. Aggregates are keyed by outcome, reason or SKU, not by the stream's
  key, so they use the key's partitioner (``use_partitioner=True``): each key
  has one changelog partition and a restore replays its writes in order.
- Windows are relative to each message's Kafka timestamp, so a restart that
  reads events again puts them in the windows they belong to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import faust
from faust.types import EventT

from analytics import stats
from analytics.settings import AnalyticsSettings
from analytics.sinks import HotMarker, Sinks
from messaging.errors import is_transient
from messaging.settings import Settings

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("dashboard.html")


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def windowed_items(wrapper: Any) -> dict[tuple[str, float], Any]:
    """A windowed table's contents as {(key, window start): value}."""
    out: dict[tuple[str, float], Any] = {}
    for key, value in list(wrapper.table.data.items()):
        name, (start, _end) = key
        out[(str(name), float(start))] = value
    return out


class Analytics:
    """The faust app and its tables; ``summary()`` feeds the dashboard."""

    def __init__(self, settings: Settings, options: AnalyticsSettings, hot: HotMarker) -> None:
        self.settings = settings
        self.options = options
        self.sinks = Sinks(settings, hot, options.stuck_after_seconds)
        self.processed = 0
        # SKUs inventory does not know: not asked again before this time.
        self._unknown_until: dict[str, float] = {}
        self.started_at = time.time()
        self._changelogs_known = False
        self.app = self._app()
        self._tables()
        self._agent()
        self._views()

    def _app(self) -> faust.App:
        s, o = self.settings, self.options
        session = s.checkout_kafka_session_timeout_ms / 1000.0
        datadir = s.checkout_data_dir / "analytics" / o.id
        datadir.mkdir(parents=True, exist_ok=True)  # faust keeps nothing there with memory://
        return faust.App(
            o.id,
            broker=broker_url(s.kafka),
            store="memory://",
            processing_guarantee="at_least_once",
            autodiscover=False,
            datadir=str(datadir),
            topic_partitions=s.checkout_partitions,
            topic_replication_factor=s.checkout_replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=session,
            broker_heartbeat_interval=s.checkout_kafka_heartbeat_interval_ms / 1000.0,
            broker_request_timeout=max(40.0, session * 2),
            broker_commit_interval=1.0,
            stream_wait_empty=False,
            table_cleanup_interval=30.0,
            web_enabled=True,
            web_bind=o.host,
            web_host=o.host,
            web_port=o.port,
            web_in_thread=False,
        )

    def _tables(self) -> None:
        o, app = self.options, self.app

        def windowed(name: str, default: Any, size: float, expires: float) -> Any:
            return app.Table(name, default=default, use_partitioner=True).tumbling(
                size, expires=expires
            ).relative_to_stream()

        # Per session: when it was requested and whether its result and which
        # order events were counted (keyed like the stream: no repartition).
        self.sessions = app.Table("sessions", default=dict).tumbling(
            o.session_window_seconds, expires=2 * o.session_window_seconds
        ).relative_to_stream()
        self.outcomes = windowed("outcomes", int, o.window_seconds, o.retention_seconds)
        self.reasons = windowed("failure-reasons", int, o.window_seconds, o.retention_seconds)
        self.latency = windowed("latency", dict, o.window_seconds, o.retention_seconds)
        self.orders = windowed("order-events", int, o.window_seconds, o.retention_seconds)
        self.demand = windowed("sku-demand", int, o.hot_window_seconds,
                               max(o.retention_seconds, 10 * o.hot_window_seconds))
        # SKUs this app marked hot: {sku: {"at": ts, "rate": requests/min}}.
        self.hot = app.Table("hot-skus", default=dict, use_partitioner=True)

    def _agent(self) -> None:
        topic = self.app.topic(*stats.WATCHED_TOPICS, key_type=bytes, value_type=bytes,
                               key_serializer="raw", value_serializer="raw")

        @self.app.agent(topic, name="checkout-analytics")
        async def watch(stream: faust.StreamT[bytes]) -> None:
            async for event in stream.events():
                await self.on_event(event)

    async def on_event(self, event: EventT[bytes]) -> None:
        if not self._changelogs_known:
            await self._learn_changelog_partitions()
        msg = event.message
        fact = stats.parse(msg.topic, msg.value, float(msg.timestamp))
        self.processed += 1
        if fact is not None:
            await _HANDLERS[type(fact)](self, fact)

    async def _learn_changelog_partitions(self) -> None:
        """Fetch the changelog topics' metadata before the first table write.

        faust's aiokafka producer picks a partitioned table's changelog partition from the
        metadata it already has, without fetching it (``Producer.key_partition``): a write
        before that metadata arrives crashes the agent with a TypeError, as seen on Apache
        Kafka when the first event came right after start. faust has no public way to ask
        for it, so this goes through the aiokafka producer it wraps.
        """
        client = self.app.producer._ensure_producer()
        for table in self.app.tables.values():
            await client.partitions_for(table.changelog_topic.get_topic_name())
        self._changelogs_known = True

    # ---- facts -----------------------------------------------------------------

    def _session(self, session_id: str) -> dict[str, Any]:
        """What is known of a session in this window or the one before."""
        window = self.sessions[session_id]
        return dict(window.current() or window.delta(self.options.session_window_seconds) or {})

    async def on_requested(self, fact: stats.Requested) -> None:
        seen = self._session(fact.session_id)
        if "req" in seen:
            return  # a repeated request is the same checkout
        seen["req"] = fact.at
        if "done_at" in seen:  # the result was read first
            self._observe_latency(seen["done_at"] - fact.at)
        self.sessions[fact.session_id] = seen
        for sku in fact.skus:
            self.demand[sku] += 1
            await self._maybe_hot(sku, int(self.demand[sku].current()))

    async def on_finished(self, fact: stats.Finished) -> None:
        seen = self._session(fact.session_id)
        if "done" in seen:
            return  # a republished result, or a redelivery
        seen.update(done=fact.outcome, done_at=fact.at)
        self.sessions[fact.session_id] = seen
        self.outcomes[fact.outcome] += 1
        if fact.reason:
            self.reasons[fact.reason] += 1
        if "req" in seen:
            self._observe_latency(fact.at - seen["req"])

    async def on_order_event(self, fact: stats.OrderEvent) -> None:
        seen = self._session(fact.session_id)
        ids = list(seen.get("ids", ()))
        if fact.event_id in ids:
            return
        seen["ids"] = ids + [fact.event_id]
        self.sessions[fact.session_id] = seen
        self.orders[fact.type] += 1

    def _observe_latency(self, seconds: float) -> None:
        self.latency["checkout"] = stats.with_sample(self.latency["checkout"].current(), seconds)

    async def _maybe_hot(self, sku: str, count: int) -> None:
        rate = stats.rate_per_minute(count, self.options.hot_window_seconds)
        if rate < self.options.hot_per_minute or sku in self.hot:
            return
        if self._unknown_until.get(sku, 0.0) > time.monotonic():
            return
        try:
            known = await self.sinks.mark_hot(sku)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("could not mark %s hot (will try again): %s", sku, exc)
            return
        if known:
            log.info("marked SKU %s hot at %.0f requests/minute", sku, rate)
            self.hot[sku] = {"at": time.time(), "rate": rate}
        else:
            self._unknown_until[sku] = time.monotonic() + self.options.hot_window_seconds
            if len(self._unknown_until) > 10_000:  # bounded: forget the oldest
                self._unknown_until.pop(next(iter(self._unknown_until)))

    # ---- the dashboard ---------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        o, now = self.options, time.time()
        hour = now - 3600
        demand = windowed_items(self.demand)
        latest = max((start for (_, start) in demand), default=None)
        current_demand = {k: v for (k, start), v in demand.items() if start == latest}
        try:
            stuck: list[dict[str, Any]] | None = await self.sinks.stuck_sagas()
        except Exception as exc:  # noqa: BLE001 - the page shows what it can
            log.warning("stuck sagas unavailable: %s", exc)
            stuck = None
        return {
            "generated_at": now,
            "window_seconds": o.window_seconds,
            "refresh_ms": o.refresh_ms,
            "processed_since_start": self.processed,
            "series": stats.series(windowed_items(self.outcomes), now - 30 * o.window_seconds,
                                   o.window_seconds, now),
            "totals": stats.totals(windowed_items(self.outcomes), hour),
            "reasons": stats.totals(windowed_items(self.reasons), hour),
            "latency": stats.latency(windowed_items(self.latency), now - 15 * 60),
            "order_events": stats.totals(windowed_items(self.orders), hour),
            "demand": [
                {"sku": sku, "per_minute": stats.rate_per_minute(n, o.hot_window_seconds)}
                for sku, n in sorted(current_demand.items(), key=lambda kv: -kv[1])[:10]
            ],
            "hot_threshold_per_minute": o.hot_per_minute,
            "hot_skus": [{"sku": sku, **_plain(v)} for sku, v in sorted(self.hot.items())],
            "stuck": stuck,
        }

    def sku_summary(self, sku: str) -> dict[str, Any]:
        """One SKU's requests per demand window, and its hot mark."""
        windows = sorted((start, int(n)) for (key, start), n in windowed_items(self.demand).items()
                         if key == sku)
        return {
            "sku": sku,
            "window_seconds": self.options.hot_window_seconds,
            "requests": sum(n for _, n in windows),
            "windows": [{"start": start, "requests": n} for start, n in windows],
            "hot": _plain(self.hot[sku]) if sku in self.hot else None,
        }

    def _views(self) -> None:
        analytics = self

        @self.app.page("/")
        async def dashboard(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return self.html(PAGE.read_text(encoding="utf-8"))

        @self.app.page("/api/summary")
        async def summary(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return self.json(await analytics.summary())

        @self.app.page("/api/sku/{sku}")
        async def sku(self: faust.web.View, request: faust.web.Request, sku: str) -> faust.web.Response:
            return self.json(analytics.sku_summary(sku))

        @self.app.page("/healthz")
        async def healthz(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
            return self.json({"ok": True})

        async def close(app: faust.App, **_: Any) -> None:
            await analytics.sinks.close()

        self.app.on_before_shutdown.connect(close)  # type: ignore[arg-type]


def _plain(value: Mapping[str, Any] | Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {"value": value}


_HANDLERS: dict[type, Callable[[Analytics, Any], Awaitable[None]]] = {
    stats.Requested: Analytics.on_requested,
    stats.Finished: Analytics.on_finished,
    stats.OrderEvent: Analytics.on_order_event,
}
