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
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import asyncpg

from checkout_saga.db import create_pool, migrate
from checkout_saga.errors import is_transient
from checkout_saga.kafka import AsyncProducer, consumer_config, ensure_topics, producer_config
from checkout_saga.outbox import OutboxRelay
from checkout_saga.service import CommandService
from checkout_saga.settings import Settings
from checkout_saga.topics import (
    CHECKOUT_REQUESTED,
    COMMAND_TOPICS,
    SAGA_REPLIES,
    all_topics,
)
from checkout_saga.worker import ConsumerLoop
from saga import schema as saga_schema
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig
from services.inventory import schema as inventory_schema
from services.inventory import store as inventory_store
from services.inventory.handlers import ROUTES as INVENTORY_ROUTES
from services.orders import schema as orders_schema
from services.orders.handlers import ROUTES as ORDERS_ROUTES
from services.payment import late_answers
from services.payment import schema as payment_schema
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentHandlers

log = logging.getLogger(__name__)

ROLES = ("coordinator", "inventory", "payment", "orders", "timers")
DDL = {
    "saga": saga_schema.DDL,
    "inventory": inventory_schema.DDL,
    "payment": payment_schema.DDL,
    "orders": orders_schema.DDL,
}
Task = Callable[[asyncio.Event], Awaitable[None]]


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
    await asyncio.to_thread(ensure_topics, settings, all_topics())
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
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def pool(self, schema: str, key: str | None = None) -> asyncpg.Pool:
        key = key or schema
        if key not in self.pools:
            self.pools[key] = await create_pool(
                self.settings.dsn_for(schema), self.settings.checkout_db_pool_size
            )
        return self.pools[key]

    async def relay(self, schema: str) -> OutboxRelay:
        if schema not in self.relays:
            assert self.producer is not None
            self.relays[schema] = OutboxRelay(await self.pool(schema), schema, self.producer)
        return self.relays[schema]

    def consumer(self, role: str, topics: list[str], handler: Callable[..., Awaitable[None]]) -> Task:
        loop = ConsumerLoop(
            role,
            consumer_config(self.settings, f"checkout-saga.{role}"),
            topics,
            handler,
            self.producer,  # type: ignore[arg-type]
            batch=self.settings.checkout_consumer_batch,
            key_concurrency=self.settings.checkout_key_concurrency,
        )
        self.consumers.append(loop)
        return loop.run

    async def coordinator(self) -> Coordinator:
        config = CoordinatorConfig(machine_config(self.settings), self.settings.checkout_hold_ttl_seconds)
        return Coordinator(await self.pool("saga"), await self.relay("saga"), config)

    async def build(self) -> list[Task]:
        s = self.settings
        tasks: list[Task] = []
        if "coordinator" in self.roles:
            coordinator = await self.coordinator()
            tasks.append(self.consumer("coordinator", [CHECKOUT_REQUESTED, SAGA_REPLIES],
                                       _route_coordinator(coordinator)))
        # The simulated gateway is "outside": its own pool, so a handler holding
        # a connection never waits on the gateway for a second one from its pool.
        gateway = SimulatedGateway(
            await self.pool("payment", key="gateway"),
            s.checkout_payment_timeout_seconds + s.checkout_gateway_late_answer_seconds,
        ) if {"payment", "timers"} & set(self.roles) else None
        for name, routes in (
            ("inventory", INVENTORY_ROUTES),
            ("payment", PaymentHandlers(gateway).routes() if gateway else None),
            ("orders", ORDERS_ROUTES),
        ):
            if name in self.roles and routes is not None:
                service = CommandService(name, await self.pool(name), routes, await self.relay(name))
                tasks.append(self.consumer(name, [COMMAND_TOPICS[name]], service.handle))
        if "timers" in self.roles:
            assert gateway is not None
            coordinator = await self.coordinator()
            inventory = await self.pool("inventory")
            payment_pool, payment_relay = await self.pool("payment"), await self.relay("payment")
            tasks.append(_every(s.checkout_timer_interval_seconds, "saga deadlines",
                                coordinator.fire_due_deadlines))
            tasks.append(_every(s.checkout_sweep_interval_seconds, "hold sweeper",
                                lambda: sweep_holds(inventory)))
            tasks.append(_every(s.checkout_timer_interval_seconds, "late gateway answers",
                                lambda: late_answers.book_late_answers(payment_pool, gateway, payment_relay)))
        for relay in self.relays.values():
            tasks.append(relay.run)
        return tasks

    async def run(self, stop: asyncio.Event) -> None:
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


def _route_coordinator(coordinator: Coordinator) -> Callable[..., Awaitable[None]]:
    async def handle(msg: object) -> None:
        if msg.topic() == CHECKOUT_REQUESTED:  # type: ignore[attr-defined]
            await coordinator.handle_request(msg)  # type: ignore[arg-type]
        else:
            await coordinator.handle_reply(msg)  # type: ignore[arg-type]

    return handle


async def sweep_holds(pool: asyncpg.Pool, batch: int = 500) -> int:
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            released = await inventory_store.expire_due_holds(conn, batch)
        total += released
        if released < batch:
            return total


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
