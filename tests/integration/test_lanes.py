"""Lanes (many messages, one transaction) on the real PostgreSQL, Redis and Kafka.

The batch handlers get ``confluent_kafka.Message`` objects built in process, in a
scratch database no session worker relays or sweeps: the outbox rows stay to be
read. The last test runs a real ``ConsumerLoop`` on a topic of its own."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from helpers import Bus, checkout_event, uid

from checkout_saga.runtime import DDL
from messaging import tracing
from messaging.db import create_pool, migrate
from messaging.errors import PermanentError
from messaging.kafka import AsyncProducer
from messaging.messages import event_message
from messaging.outbox import KeptOutbox, Publisher, Written
from messaging.service import CommandService
from messaging.topics import CHECKOUT_REQUESTED, COMMAND_TOPICS, SAGA_REPLIES, dlq_topic
from messaging.worker import ConsumerLoop
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig
from saga.outcomes import order_id_for
from schemas.contract import FailureReason, LineItem
from schemas.internal import (
    REPLY_TYPE,
    AuthorizePayment,
    Command,
    CommandReply,
    CommitStock,
    CreateOrder,
    ReserveStock,
)
from services.inventory import lane as inventory_lane
from services.inventory import store
from services.inventory.handlers import InventoryHandlers
from services.inventory.redis_gate import RedisStockGate
from services.orders.handlers import ROUTES as ORDERS_ROUTES
from services.payment.gateway import SimulatedGateway
from services.payment.handlers import PaymentHandlers

_offsets = itertools.count()
POISON = b"\x00this is not a CloudEvent"


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 8)
    for schema in ("inventory", "orders", "payment", "saga"):
        await migrate(p, schema, DDL[schema])
    yield p
    await p.close()


@pytest.fixture
async def services(stack, pool: asyncpg.Pool) -> AsyncIterator[dict[str, CommandService]]:  # type: ignore[no-untyped-def]
    """The three services wired as ``Runtime.build`` wires them; their relays never run."""
    client: Any = redis.asyncio.from_url(stack.env["REDIS_URL"])
    stock = InventoryHandlers(RedisStockGate(client))
    payment = PaymentHandlers(SimulatedGateway(pool, 60.0))
    yield {
        "inventory": CommandService("inventory", pool, inventory_lane.routes(stock),
                                    relay(pool, "inventory"), stock.prelock),
        "payment": CommandService("payment", pool, payment.routes(),
                                  relay(pool, "payment")),
        "orders": CommandService("orders", pool, ORDERS_ROUTES, relay(pool, "orders")),
    }
    await client.aclose()


def relay(pool: asyncpg.Pool, schema: str) -> Publisher:
    return KeptOutbox()  # the rows stay to be read


def kafka_message(topic: str, key: str, value: bytes) -> Message:
    return Message(topic=topic, partition=0, offset=next(_offsets), key=key.encode(), value=value)


def command(cmd: Command, service: str = "inventory") -> Message:
    out = event_message(COMMAND_TOPICS[service], type(cmd).__name__, "urn:test:coordinator",
                        cmd.checkout_session_id, cmd)
    return kafka_message(out.topic, out.key, out.value)


def lines(*cart: tuple[str, int] | tuple[str, int, int]) -> list[LineItem]:
    return [LineItem(sku=c[0], quantity=c[1], unit_price=c[2] if len(c) > 2 else 100)
            for c in cart]


def reserve(sid: str, *cart: tuple[str, int] | tuple[str, int, int]) -> ReserveStock:
    return ReserveStock(checkout_session_id=sid, items=lines(*cart), hold_ttl_seconds=900)


def create_order(sid: str, order_id: str | None = None) -> CreateOrder:
    return CreateOrder(checkout_session_id=sid, order_id=order_id or order_id_for(sid),
                       customer_id="cust_42", items=lines(("SKU-O", 1)), subtotal=100,
                       discount=0, total=100, currency="USD")


async def product(pool: asyncpg.Pool, sku: str, units: int, hot: bool = False) -> None:
    async with pool.acquire() as conn:
        await store.set_stock(conn, sku, 100, units)
        await store.set_hot(conn, sku, hot)  # hot: through the Redis gate, off the fast path


async def run(svc: CommandService, msgs: list[Message], batched: bool) -> None:
    """A lane, or the same messages one by one in order (the loop's fallback)."""
    if batched:
        await svc.handle_batch(msgs)
    else:
        for msg in msgs:
            await svc.handle(msg)


async def stock(pool: asyncpg.Pool, sku: str) -> tuple[int, ...]:
    row = await pool.fetchrow("SELECT available, held, sold FROM inventory.products WHERE sku = $1", sku)
    return tuple(row or ())


async def outbox(pool: asyncpg.Pool, schema: str, keys: list[str]) -> list[asyncpg.Record]:
    return list(await pool.fetch(f"SELECT topic, key, value FROM {schema}.outbox "
                                 "WHERE key = ANY($1::text[]) ORDER BY id", keys))


async def replies(pool: asyncpg.Pool, schema: str, sids: list[str]) -> dict[str, list[bytes]]:
    """The raw replies in the schema's outbox, by session, in order."""
    out: dict[str, list[bytes]] = {s: [] for s in sids}
    for row in await outbox(pool, schema, sids):
        if row["topic"] == SAGA_REPLIES:
            out[row["key"]].append(bytes(row["value"]))
    return out


def data(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)["data"]  # type: ignore[no-any-return]


async def count(pool: asyncpg.Pool, sql: str, *args: object) -> int:
    return int(await pool.fetchval(sql, *args))


# ---- a. a lane of carts competing for little stock -------------------------------


async def test_a_lane_of_ten_carts_gets_four_units_then_commits_them(services, pool) -> None:  # type: ignore[no-untyped-def]
    inventory, sku = services["inventory"], uid("LANE")
    await product(pool, sku, 4)
    sids = [uid("cs") for _ in range(10)]
    await inventory.handle_batch([command(reserve(s, (sku, 1))) for s in sids])

    got = {s: [data(r) for r in rs] for s, rs in (await replies(pool, "inventory", sids)).items()}
    assert all(len(rs) == 1 for rs in got.values()), got
    winners = [s for s in sids if got[s][0]["ok"]]
    assert winners == sids[:4]  # decided in lane order, as one by one would
    assert [got[s][0]["reason"] for s in sids[4:]] == ["OUT_OF_STOCK"] * 6
    assert {tuple(got[s][0]["skus"]) for s in sids[4:]} == {(sku,)}
    assert await stock(pool, sku) == (0, 4, 0)
    holds = await pool.fetch("SELECT checkout_session_id, quantity, status FROM inventory.holds "
                             "WHERE sku = $1", sku)
    assert sorted(tuple(h) for h in holds) == sorted((s, 1, "ACTIVE") for s in winners)
    assert await count(pool, "SELECT count(*) FROM inventory.inbox WHERE reply IS NOT NULL "
                       "AND checkout_session_id = ANY($1::text[])", sids) == 10

    await inventory.handle_batch([command(CommitStock(checkout_session_id=s, items=lines((sku, 1))))
                                  for s in winners])
    committed = await replies(pool, "inventory", winners)
    assert [[(data(r)["command"], data(r)["ok"]) for r in committed[s]] for s in winners] == \
        [[("ReserveStock", True), ("CommitStock", True)]] * 4
    assert await stock(pool, sku) == (0, 0, 4)
    assert await count(pool, "SELECT count(*) FROM inventory.holds WHERE sku = $1 "
                       "AND status = 'COMMITTED' AND ended_at IS NOT NULL", sku) == 4


# ---- b. a lane decides as one by one would ------------------------------------------

STOCK = {"A": 4, "B": 3, "H": 1}  # H is hot: its carts take the one-command path in the lane
CARTS: list[list[tuple[str, int] | tuple[str, int, int]]] = [
    [("A", 2)], [("A", 1), ("B", 1)], [("B", 3)], [("A", 2)], [("H", 1)],
    [("A", 1)], [("B", 2)], [("A", 1), ("B", 1)], [("A", 1, 90)], [("X", 1)], [("H", 1)],
]
EXPECTED = [(True, None), (True, None), (False, "OUT_OF_STOCK"), (False, "OUT_OF_STOCK"),
            (True, None), (True, None), (True, None), (False, "OUT_OF_STOCK"),
            (False, "PRICE_CHANGED"), (False, "UNKNOWN_SKU"), (False, "OUT_OF_STOCK")]


async def run_carts(pool: asyncpg.Pool, svc: CommandService, batched: bool) -> dict[str, Any]:
    tag = uid("EQ")
    sku = {letter: f"{tag}-{letter}" for letter in "ABHX"}  # same sort order in both runs
    for letter, units in STOCK.items():
        await product(pool, sku[letter], units, hot=letter == "H")
    sids = [uid("cs") for _ in CARTS]
    msgs = [command(reserve(s, *[(sku[c[0]], *c[1:]) for c in cart]))
            for s, cart in zip(sids, CARTS, strict=True)]
    await run(svc, msgs, batched)

    def plain(text: Any) -> Any:
        for letter, name in sku.items():
            text = text.replace(name, letter) if isinstance(text, str) else text
        return text

    got = await replies(pool, "inventory", sids)
    assert all(len(got[s]) == 1 for s in sids), got
    answers = [data(got[s][0]) for s in sids]
    return {
        "replies": [(a["ok"], a.get("reason"), [plain(x) for x in a.get("skus") or []],
                     plain(a.get("detail")), sorted(a["data"])) for a in answers],
        "stock": {letter: await stock(pool, sku[letter]) for letter in STOCK},
        "holds": await count(pool, "SELECT count(*) FROM inventory.holds "
                             "WHERE checkout_session_id = ANY($1::text[])", sids),
    }


async def test_a_lane_gives_the_replies_and_stock_of_one_by_one(services, pool) -> None:  # type: ignore[no-untyped-def]
    lane = await run_carts(pool, services["inventory"], batched=True)
    single = await run_carts(pool, services["inventory"], batched=False)
    assert [(ok, reason) for ok, reason, *_ in lane["replies"]] == EXPECTED
    assert lane == single
    assert lane["stock"] == {"A": (0, 4, 0), "B": (0, 3, 0), "H": (0, 1, 0)}
    assert lane["holds"] == 6  # carts 0, 1 (two lines), 4, 5, 6


# ---- c. duplicates in a lane and across lanes -----------------------------------------


def authorize(sid: str) -> AuthorizePayment:
    return AuthorizePayment(checkout_session_id=sid, amount=100, currency="USD", method="card",
                            token="tok_visa")


# service -> (the command for a session, queries counting its business changes)
DUPLICATES: dict[str, tuple[Any, list[str]]] = {
    "inventory": (lambda sid: reserve(sid, ("DUP-SKU", 1)),
                  ["SELECT count(*) FROM inventory.holds WHERE checkout_session_id = $1"]),
    "orders": (create_order,
               ["SELECT count(*) FROM orders.orders WHERE checkout_session_id = $1",
                ("SELECT count(*) FROM orders.history h JOIN orders.orders o USING (order_id) "
                 "WHERE o.checkout_session_id = $1")]),
    "payment": (authorize,
                [("SELECT count(*) FROM payment.payments WHERE checkout_session_id = $1 "
                  "AND status = 'AUTHORIZED'"),
                 "SELECT count(*) FROM payment.gateway WHERE idempotency_key = 'pay:' || $1"]),
}


@pytest.mark.parametrize("name", sorted(DUPLICATES))
async def test_a_duplicate_runs_once_and_a_later_repeat_resends_the_recorded_reply(  # type: ignore[no-untyped-def]
    services, pool, name: str
) -> None:
    svc, (make, queries) = services[name], DUPLICATES[name]
    await product(pool, "DUP-SKU", 10)
    twice, other, later = uid("cs"), uid("cs"), uid("cs")

    async def changes(sid: str) -> list[int]:
        return [await count(pool, q, sid) for q in queries]

    await svc.handle_batch([command(make(twice), name), command(make(other), name),
                            command(make(twice), name)])
    assert await changes(twice) == await changes(other) == [1] * len(queries)
    first = await replies(pool, name, [twice, other])
    # One send answers both copies: the second was never handled on its own.
    assert len(first[twice]) == 1 and len(first[other]) == 1
    assert data(first[twice][0])["ok"] is True

    await svc.handle_batch([command(make(later), name), command(make(twice), name)])
    assert await changes(twice) == await changes(later) == [1] * len(queries)
    again = await replies(pool, name, [twice])
    assert again[twice] == [first[twice][0]] * 2  # the recorded reply, byte for byte
    await svc.handle(command(make(twice), name))  # one by one too
    assert (await replies(pool, name, [twice]))[twice] == [first[twice][0]] * 3
    assert await count(pool, f"SELECT count(*) FROM {name}.inbox WHERE checkout_session_id = "
                       "ANY($1::text[])", [twice, other, later]) == 3
    if name == "inventory":
        assert await stock(pool, "DUP-SKU") == (7, 3, 0)


class RecordingRelay:
    """A relay that keeps what the fast path was handed (and publishes nothing)."""

    def __init__(self) -> None:
        self.handed: list[Written] = []

    def publish(self, written: Written) -> None:
        self.handed.append(written)

    def wake(self) -> None:
        return None


async def test_a_resent_reply_leaves_with_the_trace_its_outbox_row_holds(stack, pool) -> None:  # type: ignore[no-untyped-def]
    """The fast path sends the messages as written; the outbox row (what the
    sweep would send after a crash) must carry the same headers, for a repeat too."""
    client: Any = redis.asyncio.from_url(stack.env["REDIS_URL"])
    stock_handlers = InventoryHandlers(RedisStockGate(client))
    relay = RecordingRelay()
    svc = CommandService("inventory", pool, inventory_lane.routes(stock_handlers),
                         relay, stock_handlers.prelock)  # type: ignore[arg-type]
    await product(pool, "TRACE-SKU", 10)
    sid = uid("cs")
    cart = reserve(sid, ("TRACE-SKU", 1))
    handle = tracing.instrument("inventory", svc.handle)
    trace_ids = []
    for _ in range(2):  # the command, then its repeat (the recorded reply re-sent)
        parent = tracing.format_traceparent(random.getrandbits(128) or 1, 7, 1)
        trace_ids.append(parent.split("-")[1])
        msg = command(cart)
        await handle(Message(topic=msg.topic(), partition=0, offset=next(_offsets), key=msg.key(),
                             value=msg.value(), headers=[("traceparent", parent.encode())]))
    await client.aclose()
    assert len(relay.handed) == 2
    for written, trace_id in zip(relay.handed, trace_ids, strict=True):
        (sent,) = written.messages
        assert sent.headers["traceparent"].split("-")[1] == trace_id
        rows = await pool.fetch("SELECT headers FROM inventory.outbox WHERE id = ANY($1::bigint[])",
                                written.ids)
        assert [json.loads(r["headers"]) for r in rows] == [sent.headers]
    assert relay.handed[0].messages[0].value == relay.handed[1].messages[0].value


# ---- d. a lane that fails writes nothing --------------------------------------------


async def nothing_written(pool: asyncpg.Pool, schema: str, sids: list[str]) -> None:
    assert await count(pool, f"SELECT count(*) FROM {schema}.inbox "
                       "WHERE checkout_session_id = ANY($1::text[])", sids) == 0
    assert await outbox(pool, schema, sids) == []


async def test_a_poison_message_fails_the_lane_with_nothing_written(services, pool) -> None:  # type: ignore[no-untyped-def]
    sku, sids = uid("POISON"), [uid("cs"), uid("cs")]
    await product(pool, sku, 5)
    lane = [command(reserve(sids[0], (sku, 1))), kafka_message(COMMAND_TOPICS["inventory"],
            uid("cs"), POISON), command(reserve(sids[1], (sku, 1)))]
    with pytest.raises(PermanentError):
        await services["inventory"].handle_batch(lane)
    await nothing_written(pool, "inventory", sids)
    assert await stock(pool, sku) == (5, 0, 0)
    assert await count(pool, "SELECT count(*) FROM inventory.holds WHERE sku = $1", sku) == 0


async def test_a_lane_failing_mid_transaction_rolls_back_its_claims(services, pool) -> None:  # type: ignore[no-untyped-def]
    orders, sids, clash = services["orders"], [uid("cs") for _ in range(3)], uid("ord")
    # Two sessions with one order id: the lane's insert fails after its inbox claim.
    cmds = [create_order(sids[0]), create_order(sids[1], clash), create_order(sids[2], clash)]
    with pytest.raises(PermanentError, match="another session's"):
        await orders.handle_batch([command(c, "orders") for c in cmds])
    await nothing_written(pool, "orders", sids)
    assert await count(pool, "SELECT count(*) FROM orders.orders "
                       "WHERE checkout_session_id = ANY($1::text[])", sids) == 0
    # The fallback: one by one, only the clashing command fails.
    for cmd in cmds[:2]:
        await orders.handle(command(cmd, "orders"))
    with pytest.raises(PermanentError, match="another session's"):  # dead-lettered
        await orders.handle(command(cmds[2], "orders"))
    got = await replies(pool, "orders", sids)
    assert [len(got[s]) for s in sids] == [1, 1, 0]
    await nothing_written(pool, "orders", sids[2:])


# ---- e. the coordinator's lanes -----------------------------------------------------

ANSWERS: dict[str, dict[str, Any]] = {"ReserveStock": {"hold_expires_at": "2030-01-01T00:00:00+00:00"},
           "AuthorizePayment": {"authorization_id": "auth_1"}, "CommitStock": {"rehold": []},
           "ConfirmOrder": {"confirmed_at": "2030-01-01T00:00:00+00:00"}}
DECLINED = {"AuthorizePayment": ("PAYMENT_DECLINED", "The card was declined.")}


def request(sid: str) -> Message:
    return kafka_message(CHECKOUT_REQUESTED, sid, checkout_event(sid, [("SKU-S", 2, 150)]))


def reply(sid: str, name: str, fail: dict[str, tuple[str, str]]) -> Message:
    answer = {"order_id": order_id_for(sid)} if name == "CreateOrder" else ANSWERS.get(name, {})
    reason, detail = fail.get(name, (None, None))
    body = CommandReply(checkout_session_id=sid, command=name, ok=reason is None,
                        data={} if reason else answer, detail=detail,
                        reason=FailureReason(reason) if reason else None)
    out = event_message(SAGA_REPLIES, REPLY_TYPE, "urn:test:service", sid, body)
    return kafka_message(SAGA_REPLIES, sid, out.value)


async def saga_of(pool: asyncpg.Pool, sid: str) -> dict[str, Any]:
    """What a saga did, with its ids made plain so two sessions compare."""
    def plain(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(order_id_for(sid), "ORD").replace(sid, "SID"))

    row = await pool.fetchrow("SELECT status, state, deadline_at IS NULL AS no_deadline, "
                              "finished_at IS NOT NULL AS finished FROM saga.instances "
                              "WHERE checkout_session_id = $1", sid)
    assert row is not None
    state = json.loads(row["state"])
    for key in ("request_id", tracing.SAGA_CONTEXT_KEY):
        state["context"].pop(key, None)
    sent = [(r["topic"], json.loads(r["value"])["type"], plain(json.loads(r["value"])["data"]))
            for r in await outbox(pool, "saga", [sid])]
    log = await pool.fetch("SELECT step, kind, detail FROM saga.step_log "
                           "WHERE checkout_session_id = $1 ORDER BY id", sid)
    return {"status": row["status"], "state": plain(state), "no_deadline": row["no_deadline"],
            "finished": row["finished"], "sent": sent, "log": [tuple(e) for e in log]}


async def one_by_one(coordinator: Coordinator, pool: asyncpg.Pool, sid: str,
                     fail: dict[str, tuple[str, str]]) -> list[str]:
    """Answer each command the saga sends until it sends no more; the commands answered."""
    await coordinator.handle_request(request(sid))
    answered: list[str] = []
    for _ in range(20):
        sent = [json.loads(r["value"])["type"] for r in await outbox(pool, "saga", [sid])
                if r["topic"] in COMMAND_TOPICS.values()]
        if len(sent) == len(answered):
            return answered
        answered.append(sent[len(answered)])
        await coordinator.handle_reply(reply(sid, answered[-1], fail))
    raise AssertionError(f"the saga kept sending: {answered}")


@pytest.mark.parametrize("together", [False, True], ids=["two-lanes", "one-lane"])
async def test_coordinator_lanes_reach_what_one_by_one_reaches(pool, together: bool) -> None:  # type: ignore[no-untyped-def]
    coordinator = Coordinator(pool, relay(pool, "saga"), CoordinatorConfig(MachineConfig(), 900.0))
    ok_ref, bad_ref, ok_lane, bad_lane = (uid("cs") for _ in range(4))
    happy = await one_by_one(coordinator, pool, ok_ref, {})
    declined = await one_by_one(coordinator, pool, bad_ref, DECLINED)
    # Saga v3: the order is created alongside the authorization, and the capture
    # alongside the confirmation. The helper answers in the order sent, so the
    # declined saga hears CreateOrder after it began to undo: cancelled again.
    assert happy == ["ReserveStock", "AuthorizePayment", "CreateOrder", "CommitStock",
                     "CapturePayment", "ConfirmOrder"]
    assert declined == ["ReserveStock", "AuthorizePayment", "CreateOrder", "CancelOrder",
                        "CancelOrder", "ReleaseStock"]

    requests = [request(ok_lane), request(bad_lane)]
    answers = [m for pair in itertools.zip_longest(
        [reply(ok_lane, n, {}) for n in happy],
        [reply(bad_lane, n, DECLINED) for n in declined]) for m in pair if m is not None]
    for lane in ([requests + answers] if together else [requests, answers]):
        await coordinator.handle_batch(lane)

    for ref, mine, outcome in ((ok_ref, ok_lane, "CheckoutSucceeded"),
                               (bad_ref, bad_lane, "CheckoutFailed")):
        expected, got = await saga_of(pool, ref), await saga_of(pool, mine)
        assert got == expected
        assert got["finished"] and got["no_deadline"]
        results = [t for topic, t, _ in got["sent"] if topic == "checkout.results"]
        assert results == [outcome]
    assert (await saga_of(pool, ok_lane))["status"] == "SUCCEEDED"
    assert (await saga_of(pool, bad_lane))["state"]["failure"]["reason"] == "PAYMENT_DECLINED"


async def test_a_reply_for_no_saga_fails_the_coordinators_lane_with_nothing_written(pool) -> None:  # type: ignore[no-untyped-def]
    coordinator = Coordinator(pool, relay(pool, "saga"), CoordinatorConfig(MachineConfig(), 900.0))
    running, fresh, ghost = uid("cs"), uid("cs"), uid("cs")
    await coordinator.handle_batch([request(running)])
    before = await saga_of(pool, running)
    lane = [reply(running, "ReserveStock", {}), request(fresh), reply(ghost, "ReserveStock", {})]
    with pytest.raises(PermanentError, match="no saga"):
        await coordinator.handle_batch(lane)
    assert await saga_of(pool, running) == before  # still waiting for ReserveStock
    assert await count(pool, "SELECT (SELECT count(*) FROM saga.instances WHERE checkout_session_id"
                       " = ANY($1::text[])) + (SELECT count(*) FROM saga.step_log WHERE "
                       "checkout_session_id = ANY($1::text[]))", [fresh, ghost]) == 0
    assert await outbox(pool, "saga", [fresh, ghost]) == []


# ---- f. a real ConsumerLoop falls back to one by one -----------------------------------


async def test_consumer_loop_handles_a_poisoned_lane_one_by_one(stack, env, services, pool) -> None:  # type: ignore[no-untyped-def]
    topic, sku, sids, kafka = uid("test.lanes"), uid("LOOP"), [uid("cs") for _ in range(3)], \
        {"bootstrap.servers": stack.bootstrap}
    admin = AdminClient(kafka)  # kept referenced until its futures are done
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (topic, dlq_topic(topic))]).values():
        await asyncio.to_thread(fut.result, 30)
    await product(pool, sku, 10)
    keyed = [(s, command(reserve(s, (sku, 1))).value()) for s in sids]
    keyed.insert(1, (uid("poison"), POISON))  # offset 1, between good commands
    producer = Producer(kafka)
    for key, value in keyed:
        producer.produce(topic, key=key.encode(), value=value)
    await asyncio.to_thread(producer.flush, 30)

    inventory, lanes = services["inventory"], []

    async def observed(msgs: list[Message]) -> None:
        error = None
        try:
            await inventory.handle_batch(msgs)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            lanes.append(([m.offset() for m in msgs], error))

    dead_letters = AsyncProducer(kafka)
    # The stack's group timeouts (short ones on the tansu fallback, where joins wait for them).
    timeouts = {"session.timeout.ms": int(env.get("CHECKOUT_KAFKA_SESSION_TIMEOUT_MS", 6000)),
                "heartbeat.interval.ms": int(env.get("CHECKOUT_KAFKA_HEARTBEAT_INTERVAL_MS", 2000))}
    loop = ConsumerLoop("lanes-test", {**kafka, **timeouts, "group.id": uid("lanes"),
                                       "enable.auto.commit": False, "auto.offset.reset": "earliest"},
                        [topic], inventory.handle, dead_letters, batch_handler=observed,
                        batch_topics=frozenset({topic}), lanes=1)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(600):
            if loop.handled + loop.dead_lettered >= 4 or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        dead_letters.close()
    assert (loop.handled, loop.dead_lettered) == (3, 1)
    # The one lane held all four messages and failed as a whole; then one by one.
    assert lanes == [([0, 1, 2, 3], "PermanentError")]
    got = await replies(pool, "inventory", sids)
    assert [[data(r)["ok"] for r in got[s]] for s in sids] == [[True]] * 3
    assert await stock(pool, sku) == (7, 3, 0)
    bus = Bus(stack.bootstrap)
    try:
        dead = await asyncio.to_thread(bus.poll, dlq_topic(topic), 3)
    finally:
        bus.close()
    assert [(d["raw"], d["key"]) for d in dead] == [(POISON, keyed[1][0])]
    assert dead[0]["headers"]["dlq.error.class"] == "PermanentError"
    assert dead[0]["headers"]["dlq.source.offset"] == "1"
