"""Every consumer's parse-and-handle path, fed generated and mutated messages
on the real PostgreSQL and Redis (issue 14).

Each example starts from a valid message for the entry point, then mutates
it: JSON values replaced by odd ones (U+0000, huge integers, floats, deep
nesting, long strings), keys deleted or added, bytes flipped or cut, or
nothing but random bytes; sometimes with Kafka headers over the limits. The
session ids come from a small pool, so examples also repeat, replay and race
one another's sessions.

What must hold for every input, with no fault injected:
- the handler returns, or raises ``PermanentError`` (the consumer loop
  dead-letters it and the partition moves on). No other exception escapes:
  not a bug (KeyError, AssertionError, a database's refusal), and not a
  transient error either, which would be retried while the stack is healthy;
- a checkout request ends as an answer or a dead letter: its handler writes
  to the outbox (the result, a dead letter, the saga's first command), or
  its session has a saga still running, whose result comes when it ends.

The handlers run in a scratch database; nothing relays the outboxes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from confluent_kafka import Message
from helpers import checkout_event, order_event
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from checkout_saga.runtime import DDL
from messaging.db import create_pool, migrate
from messaging.errors import PermanentError
from messaging.messages import event_message
from messaging.outbox import KeptOutbox, Publisher
from messaging.service import CommandService
from messaging.topics import (
    CHECKOUT_REQUESTED,
    COMMAND_TOPICS,
    FULFILLMENT_EVENTS,
    ORDERS_REPLIES,
    ORDERS_REQUESTS,
    SAGA_REPLIES,
)
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig
from saga.outcomes import order_id_for
from schemas.contract import LineItem
from schemas.internal import (
    REPLY_TYPE,
    ApplyPromo,
    AuthorizePayment,
    CancelOrder,
    Command,
    CommandReply,
    CommitStock,
    ConfirmOrder,
    CreateOrder,
    ReleasePromo,
    ReleaseStock,
    ReserveStock,
    VoidPayment,
)
from services.inventory import lane as inventory_lane
from services.inventory import store
from services.inventory.handlers import InventoryHandlers
from services.inventory.redis_gate import RedisStockGate
from services.orders.external import OrderEvents
from services.orders.handlers import ROUTES as ORDERS_ROUTES
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentHandlers
from services.promotions.handlers import PromotionHandlers
from services.promotions.redis_gate import RedisUsageGate

SESSIONS = [f"cs-fuzz-{i}" for i in range(4)]
SKUS = ["FUZZ-1", "FUZZ-2"]
Handler = Callable[[Message], Awaitable[None]]


def kept(pool: asyncpg.Pool, schema: str) -> Publisher:
    return KeptOutbox()  # the rows stay to be counted


@dataclass
class EntryPoint:
    topic: str
    pool: asyncpg.Pool
    schema: str  # whose outbox it writes
    handle: Handler
    seeds: list[bytes]


@pytest.fixture
async def entry_points(stack, scratch_database) -> AsyncIterator[dict[str, EntryPoint]]:  # type: ignore[no-untyped-def]
    pool = await create_pool(await scratch_database(), 8)
    for schema, ddl in DDL.items():
        await migrate(pool, schema, ddl)
    client: Any = redis.asyncio.from_url(stack.env["REDIS_URL"])
    async with pool.acquire() as conn:
        for sku in SKUS:
            await store.set_stock(conn, sku, 100, 1_000)
    stock = InventoryHandlers(RedisStockGate(client))
    services = {
        "inventory": CommandService("inventory", pool, inventory_lane.routes(stock),
                                    kept(pool, "inventory"), stock.prelock),
        "payment": CommandService("payment", pool,
                                  PaymentHandlers(SimulatedGateway(pool, 60.0)).routes(),
                                  kept(pool, "payment")),
        "orders": CommandService("orders", pool, ORDERS_ROUTES, kept(pool, "orders")),
        "promotions": CommandService("promotions", pool,
                                     PromotionHandlers(RedisUsageGate(client)).routes(),
                                     kept(pool, "promotions")),
    }
    coordinator = Coordinator(pool, kept(pool, "saga"), CoordinatorConfig(MachineConfig(), 900.0))
    order_events = OrderEvents(pool, kept(pool, "orders"), 60.0).routes()
    sid = SESSIONS[0]
    points = {
        "checkout.requested": EntryPoint(CHECKOUT_REQUESTED, pool, "saga", coordinator.handle_request, [
            checkout_event(sid, [(SKUS[0], 1, 100)]),
            checkout_event(sid, [(SKUS[0], 2, 100), (SKUS[1], 1, 100)], promo_code="FUZZ10"),
        ]),
        "saga.replies": EntryPoint(SAGA_REPLIES, pool, "saga", coordinator.handle_reply, [
            encoded(SAGA_REPLIES, REPLY_TYPE, CommandReply(
                checkout_session_id=sid, command="ReserveStock", ok=True, data={"held": 1})),
            encoded(SAGA_REPLIES, REPLY_TYPE, CommandReply(
                checkout_session_id=sid, command="AuthorizePayment", ok=False,
                reason="PAYMENT_DECLINED", detail="declined")),
        ]),
        **{f"commands.{name}": EntryPoint(COMMAND_TOPICS[name], pool, name, service.handle,
                                          [command(name, c) for c in COMMAND_SEEDS[name]])
           for name, service in services.items()},
        "orders.requests": EntryPoint(ORDERS_REQUESTS, pool, "orders", order_events[ORDERS_REQUESTS], [
            order_event("CancelOrderRequested", order_id_for(sid), sid, reason="changed mind"),
            order_event("ReturnRequested", order_id_for(sid), sid),
        ]),
        "fulfillment.events": EntryPoint(FULFILLMENT_EVENTS, pool, "orders",
                                         order_events[FULFILLMENT_EVENTS], [
            order_event("OrderShipped", order_id_for(sid), sid, carrier="UPS"),
            order_event("OrderDelivered", order_id_for(sid), sid),
        ]),
        "orders.replies": EntryPoint(ORDERS_REPLIES, pool, "orders", order_events[ORDERS_REPLIES], [
            encoded(ORDERS_REPLIES, REPLY_TYPE, CommandReply(
                checkout_session_id=sid, command="RefundPayment", ok=True)),
        ]),
    }
    yield points
    await client.aclose()
    await pool.close()


ITEMS = [LineItem(sku=SKUS[0], quantity=1, unit_price=100)]
_S = SESSIONS[0]
COMMAND_SEEDS: dict[str, list[Command]] = {
    "inventory": [ReserveStock(checkout_session_id=_S, items=ITEMS, hold_ttl_seconds=900),
                  CommitStock(checkout_session_id=_S, items=ITEMS),
                  ReleaseStock(checkout_session_id=_S)],
    "payment": [AuthorizePayment(checkout_session_id=_S, amount=100, currency="USD",
                                 method="card", token="tok_visa"),
                VoidPayment(checkout_session_id=_S)],
    "orders": [CreateOrder(checkout_session_id=_S, order_id=order_id_for(_S),
                           customer_id="cust_42", items=ITEMS, subtotal=100, discount=0,
                           total=100, currency="USD"),
               ConfirmOrder(checkout_session_id=_S),
               CancelOrder(checkout_session_id=_S, payment_failed=False, reason="fuzz")],
    "promotions": [ApplyPromo(checkout_session_id=_S, promo_code="FUZZ10", items=ITEMS),
                   ReleasePromo(checkout_session_id=_S, promo_code="FUZZ10")],
}


def encoded(topic: str, type_: str, data: Any) -> bytes:
    return event_message(topic, type_, "urn:test:fuzz", data.checkout_session_id, data).value


def command(service: str, cmd: Command) -> bytes:
    return encoded(COMMAND_TOPICS[service], type(cmd).__name__, cmd)


# ---- mutations ---------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "é" * 300, "9" * 400,
                            "ord_" + "x" * 200, "tok_timeout", "USD", "-1", "1e309", "null"])
ODD_NUMBER = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                       st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**20]),
                       st.floats(allow_nan=False, allow_infinity=False))
LEAF = st.one_of(st.none(), st.booleans(), ODD_NUMBER, ODD_TEXT, st.text(max_size=12),
                 st.sampled_from(SESSIONS + SKUS))
JSON_VALUE = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                       max_size=3),
    max_leaves=10)


def paths(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the root included."""
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*at, i))
    return out


def parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    how = draw(st.sampled_from(["json"] * 6 + ["bytes", "cut", "random", "session"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "cut":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    if how == "bytes":
        raw = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    doc = json.loads(seed)
    if how == "session":  # a valid message for another session of the pool (races, replays)
        other = draw(st.sampled_from(SESSIONS))
        doc["subject"] = other
        doc["data"]["checkout_session_id"] = other
        return json.dumps(doc).encode()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)))
        change = draw(st.sampled_from(["replace", "delete", "add"]))
        if not where:
            doc = draw(JSON_VALUE) if change == "replace" else doc
            continue
        holder = parent(doc, where)
        if change == "replace":
            holder[where[-1]] = draw(JSON_VALUE)
        elif change == "delete":
            del holder[where[-1]]
        elif isinstance(holder, dict):
            holder[draw(st.text(max_size=8))] = draw(JSON_VALUE)
        else:
            holder.append(draw(JSON_VALUE))
    return json.dumps(doc, allow_nan=False, ensure_ascii=draw(st.booleans())).encode(
        "utf-8", "surrogatepass")


HEADERS = st.one_of(
    st.none(),
    st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))),
             max_size=3),
    st.just([(f"h{i}", b"v") for i in range(33)]),  # over the count limit
    st.just([("big", b"x" * 9_000)]),  # over the value limit
)


async def outbox_rows(conn: asyncpg.Connection, schema: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox"))  # type: ignore[arg-type]


async def saga_running(conn: asyncpg.Connection, session: str | None) -> bool:
    status = await conn.fetchval(
        "SELECT status FROM saga.instances WHERE checkout_session_id = $1", session)
    return status in ("RUNNING", "COMPENSATING")


ENTRY_POINTS = [
    "checkout.requested", "saga.replies", "commands.inventory", "commands.payment",
    "commands.orders", "commands.promotions", "orders.requests", "fulfillment.events",
    "orders.replies",
]


async def handled_or_refused(point: EntryPoint, name: str, msg: Message) -> str:
    """The property for one message; returns what became of it."""
    async with point.pool.acquire() as conn:
        before = await outbox_rows(conn, point.schema)
    try:
        await point.handle(msg)
    except PermanentError:
        return "refused"  # the consumer loop dead-letters it and moves on
    except Exception as exc:  # noqa: BLE001 - the property: nothing else escapes
        raise AssertionError(
            f"{type(exc).__name__} escaped {name}: {exc!r} for {msg.value()[:300]!r}") from exc
    if point.topic == CHECKOUT_REQUESTED:
        async with point.pool.acquire() as conn:
            wrote = await outbox_rows(conn, point.schema) > before
            try:
                session = json.loads(msg.value())["data"]["checkout_session_id"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                session = None
            assert wrote or await saga_running(conn, session), (
                f"a checkout request was neither answered nor dead-lettered: {msg.value()[:300]!r}")
    return "handled"


def message(point: EntryPoint, value: bytes, key: str = SESSIONS[0],
            headers: list[tuple[str, bytes | None]] | None = None) -> Message:
    return Message(topic=point.topic, partition=0, offset=0, key=key.encode(), value=value,
                   headers=headers)


@pytest.mark.parametrize("name", ENTRY_POINTS)
@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_every_input_is_handled_or_refused_and_a_request_always_ends(
    entry_points: dict[str, EntryPoint], name: str, data: st.DataObject
) -> None:
    point = entry_points[name]
    seed = data.draw(st.sampled_from(point.seeds), label="seed")
    value = data.draw(st.one_of(st.just(seed), mutated(seed)), label="value")
    headers = data.draw(HEADERS, label="headers")
    key = data.draw(st.sampled_from([*SESSIONS, "not a session id!", ""]), label="key")
    event(await handled_or_refused(point, name, message(point, value, key, headers)))


# Every field of every seed, set to each value that has broken a system like
# this one: a random search would find most of these only by luck.
POISON_TEXT = ["", "\x00", "cust\x0042", "x" * 5_000, 7, None, [], {}]
POISON_NUMBER = [0, -1, 2**63, 10**20, -(2**63) - 1, 1.5, "1", None, True]


def swept(seed: bytes) -> list[bytes]:
    doc = json.loads(seed)
    out = []
    for where in paths(doc):
        if not where:
            continue
        value = parent(doc, where)[where[-1]]
        if isinstance(value, dict | list):
            poisons: list[Any] = [None, "x", [], {}]
        elif isinstance(value, str):
            poisons = POISON_TEXT
        else:
            poisons = POISON_NUMBER
        for poison in poisons:
            changed = json.loads(seed)
            parent(changed, where)[where[-1]] = poison
            out.append(json.dumps(changed).encode())
        changed = json.loads(seed)
        del parent(changed, where)[where[-1]]
        out.append(json.dumps(changed).encode())
    return out


@pytest.mark.parametrize("name", ENTRY_POINTS)
async def test_every_field_of_every_message_set_to_poison_is_handled_or_refused(
    entry_points: dict[str, EntryPoint], name: str
) -> None:
    point = entry_points[name]
    for i, seed in enumerate(point.seeds):
        for j, value in enumerate(swept(seed)):
            # A fresh session each time, so a poison is not masked by an earlier answer.
            session = f"cs-sweep-{name}-{i}-{j}"
            value = value.replace(SESSIONS[0].encode(), session.encode())
            await handled_or_refused(point, name, message(point, value, session))
