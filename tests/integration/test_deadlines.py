"""The deadline timer on the real PostgreSQL: one saga it cannot handle (a
corrupt row, a bug) must not hold back every saga due after it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from confluent_kafka import Message
from helpers import checkout_event, uid

from checkout_saga.runtime import DDL
from messaging.db import create_pool, migrate
from messaging.outbox import Written
from messaging.topics import CHECKOUT_REQUESTED
from saga.coordinator import Coordinator, CoordinatorConfig
from saga.machine import MachineConfig


def kafka_message(topic: str, key: str, value: bytes) -> Message:
    return Message(topic=topic, partition=0, offset=0, key=key.encode(), value=value)


class Kept:
    """A relay that keeps what it is given: the outbox rows stay to be read."""

    def __init__(self) -> None:
        self.published: list[Written] = []

    def publish(self, written: Written) -> None:
        self.published.append(written)


@pytest.fixture
async def pool(scratch_database) -> AsyncIterator[asyncpg.Pool]:  # type: ignore[no-untyped-def]
    p = await create_pool(await scratch_database(), 4)
    await migrate(p, "saga", DDL["saga"])
    yield p
    await p.close()


async def test_a_saga_whose_deadline_fails_is_parked_and_the_others_fire(pool: asyncpg.Pool) -> None:
    coordinator = Coordinator(pool, Kept(), CoordinatorConfig(MachineConfig(), 900.0))  # type: ignore[arg-type]
    good, bad = uid("dl-good"), uid("dl-bad")
    for sid in (good, bad):
        value = checkout_event(sid, [("SKU-D", 1, 100)])
        await coordinator.handle_batch([kafka_message(CHECKOUT_REQUESTED, sid, value)])
    # bad: a row the machine cannot read, due first; good: due just after.
    await pool.execute("UPDATE saga.instances SET state = jsonb_set(state, '{cursor}', '\"x\"'), "
                       "deadline_at = now() - interval '2 seconds' WHERE checkout_session_id = $1", bad)
    await pool.execute("UPDATE saga.instances SET deadline_at = now() - interval '1 second' "
                       "WHERE checkout_session_id = $1", good)

    assert await coordinator.fire_due_deadlines() == 2
    # good's ReserveStock was re-sent (attempt 2); bad is parked, stuck, with its error logged.
    rows = await pool.fetch("SELECT checkout_session_id, kind, detail FROM saga.step_log "
                            "WHERE checkout_session_id = ANY($1::text[]) ORDER BY id", [good, bad])
    log = {sid: [(r["kind"], r["detail"]) for r in rows if r["checkout_session_id"] == sid]
           for sid in (good, bad)}
    assert ("command", "ReserveStock sent (attempt 2)") in log[good]
    parked = [d for k, d in log[bad] if k == "deadline-error"]
    assert len(parked) == 1 and "saga stuck" in parked[0]
    row = await pool.fetchrow("SELECT deadline_at, (state->>'stuck')::boolean AS stuck "
                              "FROM saga.instances WHERE checkout_session_id = $1", bad)
    assert row is not None and row["deadline_at"] is None and row["stuck"] is True
    # The next pass has nothing left to choke on.
    assert await coordinator.fire_due_deadlines() == 0
