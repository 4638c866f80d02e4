"""The composition root: builds the real adapters for the roles a process
runs and serves until told to stop.

Roles: ``coordinator``, ``inventory``, ``payment``, ``orders`` and ``timers``
(saga deadlines, the hold sweeper, the gateway's late answers). One process
may run all of them (``checkout-saga up``) or one (``up --role X``); the code
is the same and every worker is stateless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import redis.asyncio
from confluent_kafka import Message

from checkout_saga.metrics_server import WorkerObserver
from messaging import metrics
from messaging.db import create_pool, migrate
from messaging.errors import PermanentError, is_transient
from messaging.kafka import AsyncProducer, consumer_config, producer_config
from messaging.outbox import OutboxRelay
from messaging.retry import RetryPolicy
from messaging.service import CommandService
from messaging.settings import Settings
from messaging.topic_admin import create_topics, plan_topics
from messaging.topics import (
    CHECKOUT_REQUESTED,
    COMMAND_TOPICS,
    SAGA_REPLIES,
)
from messaging.worker import BatchHandler, ConsumerLoop
from saga import metrics as saga_metrics
from saga import schema as saga_schema
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig
from services.inventory import lane as inventory_lane
from services.inventory import metrics as inventory_metrics
from services.inventory import schema as inventory_schema
from services.inventory import timers as inventory_timers
from services.inventory.handlers import InventoryHandlers
from services.inventory.hot import HotConfig
from services.inventory.redis_gate import RedisStockGate
from services.orders import schema as orders_schema
from services.orders import settlement
from services.orders.external import OrderEvents
from services.orders.handlers import ROUTES as ORDERS_ROUTES
from services.payment import late_answers
from services.payment import schema as payment_schema
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentHandlers
from services.promotions import schema as promotions_schema
from services.promotions.handlers import PromotionHandlers
from services.promotions.redis_gate import RedisUsageGate

log = logging.getLogger(__name__)

ROLES = ("coordinator", "inventory", "payment", "orders", "promotions", "timers")
DDL = {
    "saga": saga_schema.DDL,
    "inventory": inventory_schema.DDL,
    "payment": payment_schema.DDL,
    "orders": orders_schema.DDL,
    "promotions": promotions_schema.DDL,
}
Task = Callable[[asyncio.Event], Awaitable[None]]
T = TypeVar("T")
Handler = Callable[[Message], Awaitable[None]]


def machine_config(settings: Settings) -> MachineConfig:
    return MachineConfig(
        timeouts={
            "step": settings.checkout_step_timeout_seconds,
            "payment": settings.checkout_payment_timeout_seconds,
        },
        max_compensation_attempts=settings.checkout_compensation_max_attempts,
        max_action_attempts=settings.checkout_step_max_attempts,
    )


async def prepare(settings: Settings) -> None:
    """Create every topic and every schema (idempotent; safe to run concurrently)."""
    # The plan of `checkout-saga topics create`: a worker that starts before the
    # topics job still creates them with the same partitions and retention.
    report = await asyncio.to_thread(create_topics, settings.kafka, plan_topics(settings))
    if report.created:
        log.info("created topics %s", ", ".join(report.created))
    for schema, ddl in DDL.items():
        pool = await create_pool(settings.dsn_for(schema), 2)
        try:
            await migrate(pool, schema, ddl)
        finally:
            await pool.close()


@dataclass
class Runtime:
    settings: Settings
    roles: tuple[str, ...] = ROLES
    pools: dict[str, asyncpg.Pool] = field(default_factory=dict)
    relays: dict[str, OutboxRelay] = field(default_factory=dict)
    consumers: list[ConsumerLoop] = field(default_factory=list)
    producer: AsyncProducer | None = None
    redis_client: redis.asyncio.Redis | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def pool(self, schema: str, key: str | None = None) -> asyncpg.Pool:
        key = key or schema
        if key not in self.pools:
            self.pools[key] = await create_pool(
                self.settings.dsn_for(schema), self.settings.checkout_db_pool_size
            )
        return self.pools[key]

    def usage_gate(self) -> RedisUsageGate:
        """The promo usage gate; its Redis client is built here, never at import."""
        if self.redis_client is None:
            if not self.settings.redis_url:
                raise RuntimeError("no Redis URL for promotions: set REDIS_URL")
            self.redis_client = redis.asyncio.from_url(self.settings.redis_url)
        return RedisUsageGate(self.redis_client)

    def stock_gate(self) -> RedisStockGate:
        """The hot-SKU gate; it shares the process's one Redis client."""
        if self.redis_client is None:
            if not self.settings.redis_url:
                raise RuntimeError("no Redis URL for the hot-SKU gate: set REDIS_URL")
            self.redis_client = redis.asyncio.from_url(self.settings.redis_url)
        return RedisStockGate(self.redis_client)

    async def relay(self, schema: str) -> OutboxRelay:
        if schema not in self.relays:
            assert self.producer is not None
            # The relay's DELETE need not wait for the WAL flush: a deletion
            # lost in a crash only re-publishes rows, which the inboxes absorb.
            relay_pool = await create_pool(
                self.settings.dsn_for(schema), 2, {"synchronous_commit": "off"}
            )
            self.pools[f"{schema}:relay"] = relay_pool
            self.relays[schema] = OutboxRelay(relay_pool, schema, self.producer)
        return self.relays[schema]

    def consumer(
        self,
        role: str,
        topics: list[str],
        handler: Callable[..., Awaitable[None]],
        batch_handler: BatchHandler | None = None,
        batch_topics: Iterable[str] = (),
    ) -> Task:
        lanes = self.settings.checkout_consumer_lanes
        loop = ConsumerLoop(
            role,
            consumer_config(self.settings, f"checkout-saga.{role}")
            | metrics.lag_statistics(role, self.settings.checkout_metrics_lag_interval_ms),
            topics,
            handler,
            self.producer,  # type: ignore[arg-type]
            batch=self.settings.checkout_consumer_batch,
            key_concurrency=self.settings.checkout_key_concurrency,
            batch_handler=batch_handler if lanes else None,
            batch_topics=frozenset(batch_topics),
            lanes=lanes,
            inflight_batches=self.settings.checkout_consumer_inflight_batches,
            commit_interval=self.settings.checkout_consumer_commit_interval_ms / 1000,
            retry=RetryPolicy(self.settings.checkout_retry_budget_attempts,
                              self.settings.checkout_retry_budget_seconds),
            # A quarter of the stop's budget for the handlers in hand, a
            # quarter for the last commit and the close (the runtime cancels
            # what is left at 0.6 of it).
            stop_grace=self.settings.checkout_stop_timeout_seconds / 4,
        )
        self.consumers.append(loop)
        return loop.run

    async def coordinator(self) -> Coordinator:
        config = CoordinatorConfig(machine_config(self.settings), self.settings.checkout_hold_ttl_seconds)
        return Coordinator(await self.pool("saga"), await self.relay("saga"), config)

    async def _orders_after_checkout(self, tasks: list[Task]) -> dict[str, Handler]:
        """orders.requests, fulfillment.events and orders.replies for the orders
        role, and the timer that re-sends unanswered settlement commands."""
        s = self.settings
        retry_after = s.checkout_step_timeout_seconds
        pool, relay = await self.pool("orders"), await self.relay("orders")
        tasks.append(_every(s.checkout_sweep_interval_seconds, "order settlements",
                            lambda: settlement.resend_due(pool, relay, retry_after)))
        return OrderEvents(pool, relay, retry_after).routes()

    async def build(self) -> list[Task]:
        s = self.settings
        tasks: list[Task] = []
        if "coordinator" in self.roles:
            coordinator = await self.coordinator()
            topics = [CHECKOUT_REQUESTED, SAGA_REPLIES]
            tasks.append(self.consumer("coordinator", topics, _route_coordinator(coordinator),
                                       coordinator.handle_batch, topics))
        # The simulated gateway is "outside": its own pool, so a handler holding
        # a connection never waits on the gateway for a second one from its pool.
        gateway = SimulatedGateway(
            await self.pool("payment", key="gateway"),
            s.checkout_payment_timeout_seconds + s.checkout_gateway_late_answer_seconds,
        ) if {"payment", "timers"} & set(self.roles) else None
        stock = (InventoryHandlers(self.stock_gate(), hot_config(s))
                 if "inventory" in self.roles else None)
        for name, routes, prelock in (
            ("inventory", inventory_lane.routes(stock) if stock else None,
             stock.prelock if stock else None),
            ("payment", PaymentHandlers(gateway).routes() if gateway else None, None),
            ("orders", ORDERS_ROUTES, None),
            ("promotions", PromotionHandlers(self.usage_gate()).routes()
             if "promotions" in self.roles else None, None),
        ):
            if name in self.roles and routes is not None:
                service = CommandService(name, await self.pool(name), routes, await self.relay(name),
                                         prelock)
                by_topic: dict[str, Handler] = {COMMAND_TOPICS[name]: service.handle}
                if name == "orders":  # and the order's life after checkout
                    by_topic.update(await self._orders_after_checkout(tasks))
                tasks.append(self.consumer(name, list(by_topic), _route_by_topic(by_topic),
                                           service.handle_batch, [COMMAND_TOPICS[name]]))
        if "timers" in self.roles:
            assert gateway is not None
            coordinator = await self.coordinator()
            inventory = await self.pool("inventory")
            payment_pool, payment_relay = await self.pool("payment"), await self.relay("payment")
            tasks.append(_every(s.checkout_timer_interval_seconds, "saga deadlines",
                                coordinator.fire_due_deadlines))
            stock_gate = self.stock_gate()
            tasks.append(_every(s.checkout_sweep_interval_seconds, "hold sweeper",
                                lambda: sweep_holds(inventory, stock_gate)))
            tasks.append(_every(s.checkout_hot_reconcile_interval_seconds, "hot stock reconcile",
                                lambda: reconcile_hot(inventory, stock_gate, hot_config(s))))
            tasks.append(_every(s.checkout_timer_interval_seconds, "late gateway answers",
                                lambda: late_answers.book_late_answers(payment_pool, gateway, payment_relay)))
            saga_pool = await self.pool("saga")
            tasks.append(_every(s.checkout_metrics_sample_seconds, "metrics gauges",
                                lambda: sample_gauges(inventory, saga_pool)))
        for relay in self.relays.values():
            tasks.append(relay.run)
        return tasks

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        # /metrics, /healthz and /readyz from the start: ready once the consumers are built.
        observer = WorkerObserver.start(
            s.checkout_metrics_host, s.checkout_metrics_port, s.checkout_data_dir,
            self.ready.is_set, roles=list(self.roles),
        )
        try:
            await self._run(stop)
        finally:
            observer.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        clock = StopClock(self.settings.checkout_stop_timeout_seconds)
        running: list[asyncio.Task[None]] = []
        try:
            # Starting can hang too (a database that does not answer): a stop
            # meanwhile cancels it.
            tasks = await _unless_stopped(stop, self._start())
            if tasks is None:
                return
            running = [asyncio.create_task(t(stop)) for t in tasks]
            self.ready.set()
            log.info("serving roles %s", ", ".join(self.roles))
            await _serve(stop, running)
        finally:
            stop.set()
            clock.start()
            await self._shut_down(running, clock)

    async def _start(self) -> list[Task]:
        await prepare(self.settings)
        self.producer = AsyncProducer(producer_config(self.settings))
        await asyncio.to_thread(self.producer.warm_up)
        return await self.build()

    async def _shut_down(self, running: list[asyncio.Task[None]], clock: StopClock) -> None:
        """Within the stop timeout whatever is stuck: the tasks end by
        themselves (each consumer abandons its batch in hand, uncommitted) or
        are cancelled; then what is sendable is flushed and the pools closed,
        each step bounded."""
        if running:
            _, late = await asyncio.wait(running, timeout=clock.left(0.6))
            for task in late:
                log.warning("stopping: %s still running, cancelled", task.get_coro().__qualname__)  # type: ignore[union-attr]
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=clock.left(0.65))
        if self.producer is not None:
            if self.relays:  # what the last batches wrote, if the database still answers
                await _bounded("flushing the outbox", clock.left(0.8), asyncio.gather(
                    *(relay.publish_once() for relay in self.relays.values())))
            self.producer.close(timeout=clock.left(0.9))
        pools = list(self.pools.values())
        if not await _bounded("closing the pools", clock.left(0.97),
                              asyncio.gather(*(pool.close() for pool in pools))):
            for pool in pools:
                pool.terminate()
        if self.redis_client is not None:
            await _bounded("closing Redis", clock.left(1.0), self.redis_client.aclose())


class StopClock:
    """The stop's time budget: ``left(f)`` is the time until the fraction
    ``f`` of it has passed since ``start``."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()

    def left(self, fraction: float) -> float:
        return max(0.0, self._started + self._seconds * fraction - time.monotonic())


async def _serve(stop: asyncio.Event, running: list[asyncio.Task[None]]) -> None:
    """Until stopped; a task that fails stops everything and its error is raised."""
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([*running, stopping], return_when=asyncio.FIRST_COMPLETED)
        while stopping not in done:
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            pending = [t for t in running if not t.done()]
            done, _ = await asyncio.wait([*pending, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """``work``'s result, unless ``stop`` is set first: then it is cancelled (None)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()  # or raise what it raised
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 1.0)
    return None


async def _bounded(what: str, seconds: float, work: Awaitable[Any]) -> bool:
    """``work`` given ``seconds``; False (logged) when it failed or had to be cancelled."""
    try:
        await asyncio.wait_for(work, max(seconds, 0.01))
        return True
    except Exception as exc:  # noqa: BLE001 - stopping: what is not done is redone after the restart
        log.warning("stopping: %s did not finish: %s", what, exc or type(exc).__name__)
        return False


def hard_stop_after(seconds: float) -> threading.Timer:
    """The last resort of `up`: exit this long from now, whatever the orderly
    stop is still waiting on (a call stuck in C, a thread that never returns).
    Workers are stateless, so this loses nothing: whatever was not committed
    is redelivered, whatever was not published stays in the outbox."""

    def exit_now() -> None:
        log.critical("stop took longer than %.1fs: exiting without finishing it", seconds)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(1)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()
    return timer


def _route_by_topic(by_topic: Mapping[str, Handler]) -> Handler:
    async def handle(msg: Message) -> None:
        handler = by_topic.get(msg.topic() or "")
        if handler is None:
            raise PermanentError(f"this consumer does not handle topic {msg.topic()}")
        await handler(msg)

    return handle


def _route_coordinator(coordinator: Coordinator) -> Callable[..., Awaitable[None]]:
    async def handle(msg: object) -> None:
        if msg.topic() == CHECKOUT_REQUESTED:  # type: ignore[attr-defined]
            await coordinator.handle_request(msg)  # type: ignore[arg-type]
        else:
            await coordinator.handle_reply(msg)  # type: ignore[arg-type]

    return handle


def hot_config(settings: Settings) -> HotConfig:
    return HotConfig(threshold=settings.checkout_hot_threshold,
                     window_seconds=settings.checkout_hot_window_seconds)


async def sweep_holds(pool: asyncpg.Pool, gate: RedisStockGate | None = None, batch: int = 500) -> int:
    return await inventory_timers.sweep_holds(pool, gate, batch)


async def reconcile_hot(pool: asyncpg.Pool, gate: RedisStockGate, config: HotConfig) -> int:
    """Always 0: a reconcile round never asks the timer to run again at once."""
    await inventory_timers.reconcile_hot(pool, gate, config)
    return 0


def _every(interval: float, name: str, job: Callable[[], Awaitable[int]]) -> Task:
    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            busy = 0
            try:
                busy = await job()
            except Exception as exc:  # noqa: BLE001 - a timer must outlive outages
                log.log(logging.WARNING if is_transient(exc) else logging.ERROR, "%s: %s", name, exc)
            if busy:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    return run


async def sample_gauges(inventory: asyncpg.Pool, saga: asyncpg.Pool) -> int:
    """The gauges that come from a query (timers role). Returns 0: never busy."""
    await inventory_metrics.sample_live_holds(inventory)
    await saga_metrics.sample_in_flight(saga)
    return 0
