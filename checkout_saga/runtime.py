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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio
from confluent_kafka import Message

from checkout_saga import metrics
from checkout_saga.db import create_pool, migrate
from checkout_saga.errors import PermanentError, is_transient
from checkout_saga.kafka import AsyncProducer, consumer_config, producer_config
from checkout_saga.metrics_server import WorkerObserver
from checkout_saga.outbox import OutboxRelay
from checkout_saga.service import CommandService
from checkout_saga.settings import Settings
from checkout_saga.topic_admin import create_topics, plan_topics
from checkout_saga.topics import (
    CHECKOUT_REQUESTED,
    COMMAND_TOPICS,
    SAGA_REPLIES,
)
from checkout_saga.worker import BatchHandler, ConsumerLoop
from saga import schema as saga_schema
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig
from services.inventory import lane as inventory_lane
from services.inventory import schema as inventory_schema
from services.inventory import timers as inventory_timers
from services.inventory.gate import RedisStockGate
from services.inventory.handlers import InventoryHandlers
from services.inventory.hot import HotConfig
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
Handler = Callable[[Message], Awaitable[None]]


def machine_config(settings: Settings) -> MachineConfig:
    return MachineConfig(
        timeouts={
            "step": settings.checkout_step_timeout_seconds,
            "payment": settings.checkout_payment_timeout_seconds,
        },
        max_compensation_attempts=settings.checkout_compensation_max_attempts,
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
                                lambda: metrics.sample_gauges(inventory, saga_pool)))
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
        await prepare(self.settings)
        self.producer = AsyncProducer(producer_config(self.settings))
        await asyncio.to_thread(self.producer.warm_up)
        try:
            tasks = await self.build()
            running = [asyncio.create_task(t(stop)) for t in tasks]
            self.ready.set()
            log.info("serving roles %s", ", ".join(self.roles))
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    stop.set()
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            for relay in self.relays.values():  # flush what the last batch wrote
                with contextlib.suppress(Exception):
                    await relay.publish_once()
            self.producer.close()
            for pool in self.pools.values():
                await pool.close()
            if self.redis_client is not None:
                await self.redis_client.aclose()


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
