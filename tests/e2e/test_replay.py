"""Replay for incident recovery: rewinding consumer groups changes nothing done.

On a stack of its own: a mixed storm, then every topic the project consumes is
replayed from the beginning with the workers stopped, then reprocessed. The
same orders, the same stock, no new charge (not even a new gateway call), no
second OrderConfirmed. Replay by time is checked between two batches (the
parsing of --since and the refusal of a future time: tests/unit/test_replay_since.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from ops_helpers import OwnStack

from checkout_saga.client import Cart, checkout_request
from checkout_saga.ops.chaos import plan_checkouts, seed, wait_quiet
from checkout_saga.ops.replay import replay
from messaging.topic_reader import read_topic
from messaging.topics import CHECKOUT_REQUESTED, CONSUMED, GROUPS, ORDERS_CONFIRMED


def snapshot(own: OwnStack) -> dict[str, Any]:
    return {
        "orders": own.sql("SELECT order_id, checkout_session_id, status, total, confirmed_at "
                          "FROM orders.orders ORDER BY order_id"),
        "stock": own.sql("SELECT sku, available, held, sold, added FROM inventory.products "
                         "ORDER BY sku"),
        "holds": own.sql("SELECT checkout_session_id, sku, status FROM inventory.holds "
                         "ORDER BY 1, 2"),
        "payments": own.sql("SELECT checkout_session_id, status, authorization_id "
                            "FROM payment.payments ORDER BY 1"),
        "gateway": own.sql("SELECT idempotency_key, status, attempts FROM payment.gateway "
                           "ORDER BY 1"),
        "sagas": own.sql("SELECT checkout_session_id, status FROM saga.instances ORDER BY 1"),
        "promos": own.sql("SELECT code, taken FROM promotions.codes ORDER BY 1"),
        "usages": own.sql("SELECT checkout_session_id, status FROM promotions.usages ORDER BY 1"),
    }


def confirmed(bootstrap: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in read_topic(bootstrap, ORDERS_CONFIRMED, idle=0.3):
        event = json.loads(r.value)
        out.setdefault(event["subject"], set()).add(event["id"])
    return out


def lag(bootstrap: str) -> int:
    """Messages the project's groups have not committed yet, over all they read."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ends: dict[tuple[str, int], int] = {}
    topics = sorted({t for ts in GROUPS.values() for t in ts})
    with ThreadPoolExecutor(len(topics)) as pool:
        for topic, records in zip(topics, pool.map(lambda t: read_topic(bootstrap, t, idle=0.2),
                                                   topics)):
            for r in records:
                ends[(topic, r.partition)] = r.offset + 1
    behind = 0
    for group, topics in GROUPS.items():
        tps = [TopicPartition(t, p) for (t, p) in ends if t in topics]
        if not tps:
            continue
        got = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)])[group].result()
        for tp in got.topic_partitions:
            behind += ends[(tp.topic, tp.partition)] - max(tp.offset, 0)
    return behind


def drive(own: OwnStack, cart: Cart, run: str, n: int, rng: random.Random, first: int) -> list[str]:
    checkouts = plan_checkouts(first + n, run, rng)[first:]
    for c in checkouts:
        cart.send(c.session, c.payload)
        if c.repeat:
            cart.send(c.session, c.payload)
    cart.flush()
    sessions = [c.session for c in checkouts]
    assert len(cart.results(sessions, 60.0)) == len(sessions)
    assert own.settings is not None
    asyncio.run(wait_quiet(own.settings, 60.0, settle=0.5))
    return sessions


def test_replay_from_the_beginning_changes_nothing(own_workdir: Path) -> None:
    # Eight partitions (the default), not the suite's two: the replay must cross several.
    with OwnStack(own_workdir, {"CHECKOUT_PARTITIONS": "8"}) as own:
        assert own.settings is not None
        run = f"rp{random.randrange(10**6)}"
        asyncio.run(seed(own.settings, run))
        worker = own.start()
        cart = Cart(own.settings)
        try:
            warm = f"chaos-{run}-warm"
            cart.send(warm, checkout_request(warm, [(f"CH-{run}-0", 1, 1999)]))
            cart.flush()
            assert warm in cart.results([warm], 90.0), "the worker never answered"
            rng = random.Random(3)
            drive(own, cart, run, 30, rng, 0)  # every kind at least once (the first 13)
            time.sleep(0.5)
            middle = datetime.now(UTC)
            time.sleep(0.5)
            second = drive(own, cart, run, 12, rng, 30)
        finally:
            cart.close()
        before, confirmed_before = snapshot(own), confirmed(own.bootstrap)
        assert len(before["orders"]) > 10 and confirmed_before
        own.stop(worker)

        # By time, between two batches: exactly where the second storm began.
        requests = read_topic(own.bootstrap, CHECKOUT_REQUESTED, idle=0.3)
        first_of_second: dict[int, int] = {}
        for r in requests:
            if r.key in second:
                first_of_second.setdefault(r.partition, r.offset)
        planned = replay(own.bootstrap, [CHECKOUT_REQUESTED], middle, dry_run=True)
        targets = {p.partition: p.target for p in planned}
        assert targets == {p: first_of_second.get(p) for p in targets}
        assert len(first_of_second) >= 3  # the check saw several partitions with data

        # Every topic a worker reads, from the beginning, for every group reading it.
        args = [a for t in CONSUMED for a in ("--topic", t)]
        done = own.invoke_json("replay", *args, "--since", "beginning")
        moved = [p for p in done["partitions"] if p["new"] is not None]
        assert moved and all(p["new"] == 0 for p in moved)
        assert {p["group"] for p in moved} == set(GROUPS)
        assert lag(own.bootstrap) > 0

        own.start()
        end = time.monotonic() + 90
        while lag(own.bootstrap) and time.monotonic() < end:
            time.sleep(0.5)
        assert lag(own.bootstrap) == 0
        asyncio.run(wait_quiet(own.settings, 60.0, settle=1.0))

        after = snapshot(own)
        for part in before:
            assert after[part] == before[part], part
        confirmed_after = confirmed(own.bootstrap)
        assert confirmed_after == confirmed_before
        assert all(len(ids) == 1 for ids in confirmed_after.values())
        own.invoke("verify", "--grace", "1")
