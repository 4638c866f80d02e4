"""Every statement the coordinator runs on ``saga.instances`` and ``saga.step_log``.

One write path (``write``): new rows, version-guarded updates, their step-log
entries and their outbox rows in one statement, whether it carries one decision
or a whole lane's. The log and outbox rows are inserted only when every new row
went in and every guarded update found its version, so a lost race writes
nothing even outside a transaction, and the caller raises ``SagaMovedOn``.

Every time is PostgreSQL's (``now()``): deadlines are written as ``now() + secs``
and fired by ``deadline_at <= now()``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from messaging.errors import TransientError
from messaging.message import OutgoingMessage
from messaging.outbox import Written, insert_args, insert_sql
from saga.state import SagaState, from_json, to_json

SCHEMA = "saga"

# A deadline to write: seconds from PostgreSQL's now() (None: no deadline) and its token.
Deadline = tuple[float | None, str | None]
# A step-log entry: session, step, kind, detail.
Entry = tuple[str, str, str, str]


class SagaMovedOn(TransientError):
    """Another worker updated the saga between our read and our write."""


@dataclass
class SagaRow:
    """One saga as read, and what the write must change on its row."""

    state: SagaState | None  # None: not started before this write
    version: int  # as read (0: a new row)
    finished_at: datetime | None
    changed: bool = False
    deadline: Deadline | None = None  # None: unchanged

    def absorb(self, state: SagaState, deadline: Deadline | None,
               finished_at: datetime | None) -> None:
        self.state, self.changed = state, True
        if deadline is not None:
            self.deadline = deadline
        if finished_at is not None:
            self.finished_at = finished_at


@dataclass(frozen=True)
class Due:
    """A saga whose deadline has passed, locked for this pass. Its state is read when
    handled (``saga_state``), so that a corrupt row is one saga's failure, not the pass's."""

    session_id: str
    raw_state: str
    version: int
    token: str
    now: datetime

    def saga_state(self) -> SagaState:
        return from_json(json.loads(self.raw_state))


async def now(conn: asyncpg.Connection) -> datetime:
    found: datetime = await conn.fetchval("SELECT now()")
    return found


async def start(conn: asyncpg.Connection, state: SagaState) -> datetime | None:
    """The saga's first row (version 1); PostgreSQL's now(), or None if it exists."""
    started: datetime | None = await conn.fetchval(
        "INSERT INTO saga.instances (checkout_session_id, definition_version, status, state) "
        "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING now()",
        state.session_id, state.definition_version, state.status.value,
        json.dumps(to_json(state)),
    )
    return started


async def start_ended(conn: asyncpg.Connection, state: SagaState) -> datetime | None:
    """A saga that ends as it starts (a rejected request); its finish time, or None if
    the session has a saga already."""
    finished: datetime | None = await conn.fetchval(
        "INSERT INTO saga.instances (checkout_session_id, definition_version, status, state, "
        "finished_at) VALUES ($1, $2, $3, $4::jsonb, now()) ON CONFLICT DO NOTHING "
        "RETURNING finished_at",
        state.session_id, state.definition_version, state.status.value,
        json.dumps(to_json(state)),
    )
    return finished


async def load(conn: asyncpg.Connection, session_id: str) -> tuple[SagaRow, datetime] | None:
    """The saga as it is, with PostgreSQL's now(); None if there is none."""
    row = await conn.fetchrow(
        "SELECT state, version, finished_at, now() AS now FROM saga.instances "
        "WHERE checkout_session_id = $1",
        session_id,
    )
    if row is None:
        return None
    return SagaRow(from_json(json.loads(row["state"])), row["version"], row["finished_at"]), row["now"]


async def lock(conn: asyncpg.Connection, session_ids: Sequence[str]
               ) -> tuple[dict[str, SagaRow], datetime | None]:
    """The sagas of these sessions that exist, locked (``FOR UPDATE``), and PostgreSQL's
    now() (None when none exists)."""
    rows = await conn.fetch(
        "SELECT checkout_session_id, state, version, finished_at, now() AS now "
        "FROM saga.instances WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
        list(dict.fromkeys(session_ids)),
    )
    found = {r["checkout_session_id"]: SagaRow(from_json(json.loads(r["state"])), r["version"],
                                               r["finished_at"]) for r in rows}
    return found, rows[0]["now"] if rows else None


async def due(conn: asyncpg.Connection, limit: int) -> list[Due]:
    """Sagas whose deadline has passed, oldest first, locked; those another pass holds
    are skipped."""
    rows = await conn.fetch(
        "SELECT checkout_session_id, state, version, deadline_token, now() AS now "
        "FROM saga.instances WHERE deadline_at <= now() ORDER BY deadline_at LIMIT $1 "
        "FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [Due(r["checkout_session_id"], r["state"], r["version"], r["deadline_token"] or "",
                r["now"]) for r in rows]


async def park(conn: asyncpg.Connection, session_id: str, detail: str) -> None:
    """The saga loses its deadline and is marked stuck, for an operator."""
    await conn.execute(
        "UPDATE saga.instances SET deadline_at = NULL, deadline_token = NULL, "
        "state = jsonb_set(state, '{stuck}', 'true'), version = version + 1, "
        "updated_at = now() WHERE checkout_session_id = $1", session_id)
    await log(conn, [(session_id, "-", "deadline-error", detail)])


async def log(conn: asyncpg.Connection, entries: Sequence[Entry]) -> None:
    """Step-log entries with no change to the saga's row (a repeat, a rejection)."""
    if entries:
        await conn.executemany(
            "INSERT INTO saga.step_log (checkout_session_id, step, kind, detail) "
            "VALUES ($1, $2, $3, $4)", list(entries))


async def in_flight(pool: asyncpg.Pool) -> dict[str, int]:
    """Sagas not ended, by RUNNING, COMPENSATING and STUCK."""
    rows = await pool.fetch(
        "SELECT CASE WHEN (state->>'stuck')::boolean THEN 'STUCK' ELSE status END AS status, "
        "count(*) AS n FROM saga.instances WHERE status IN ('RUNNING', 'COMPENSATING') "
        "GROUP BY 1"
    )
    return {r["status"]: r["n"] for r in rows}


def _columns(rows: list[tuple[str, SagaRow]], number: list[int]) -> list[list[Any]]:
    states = [s.state for _, s in rows]
    return [
        [sid for sid, _ in rows],
        number,
        [state.status.value for state in states if state is not None],
        [json.dumps(to_json(state)) for state in states if state is not None],
        [s.deadline is not None for _, s in rows],
        [s.deadline[0] if s.deadline else None for _, s in rows],
        [s.deadline[1] if s.deadline else None for _, s in rows],
        [s.finished_at for _, s in rows],
    ]


_ALL_WENT_IN = "(SELECT count(*) FROM inserted) = $25 AND (SELECT count(*) FROM moved) = $26"

_WRITE = f"""
WITH inserted AS (
    INSERT INTO saga.instances (checkout_session_id, definition_version, status, state,
                                deadline_at, deadline_token, finished_at)
    SELECT s, v, st, j::jsonb, now() + make_interval(secs => da), dt, fa
    FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[],
                $6::float8[], $7::text[], $8::timestamptz[])
        AS n(s, v, st, j, sd, da, dt, fa)
    ON CONFLICT DO NOTHING RETURNING 1
), moved AS (
    UPDATE saga.instances i SET state = u.j::jsonb, status = u.st,
        version = i.version + 1, updated_at = now(),
        deadline_at = CASE WHEN u.sd THEN now() + make_interval(secs => u.da)
                           ELSE i.deadline_at END,
        deadline_token = CASE WHEN u.sd THEN u.dt ELSE i.deadline_token END,
        finished_at = coalesce(u.fa, i.finished_at)
    FROM unnest($9::text[], $10::int[], $11::text[], $12::text[], $13::bool[],
                $14::float8[], $15::text[], $16::timestamptz[])
        AS u(s, ver, st, j, sd, da, dt, fa)
    WHERE i.checkout_session_id = u.s AND i.version = u.ver RETURNING 1
), logged AS (
    INSERT INTO saga.step_log (checkout_session_id, step, kind, detail)
    SELECT s, st, k, d FROM unnest($17::text[], $18::text[], $19::text[], $20::text[])
        AS l(s, st, k, d)
    WHERE {_ALL_WENT_IN}
), sent AS (
    {insert_sql(SCHEMA, 21, where=_ALL_WENT_IN)}
)
SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM moved) AS moved,
       ARRAY(SELECT id FROM sent) AS ids
"""


async def write(conn: asyncpg.Connection, sagas: dict[str, SagaRow], entries: Sequence[Entry],
                out: list[OutgoingMessage]) -> Written:
    """The one write: the changed sagas' new rows (version 0) and guarded updates (the
    version read), their log entries and outbox rows, in one statement. Raises
    ``SagaMovedOn``, with nothing written, if a row exists already or moved on."""
    new = [(sid, s) for sid, s in sagas.items() if s.changed and s.version == 0]
    moved = [(sid, s) for sid, s in sagas.items() if s.changed and s.version > 0]
    counts = await conn.fetchrow(
        _WRITE,
        # New rows carry their definition's version; moved rows the row version they were read at.
        *_columns(new, [s.state.definition_version for _, s in new if s.state is not None]),
        *_columns(moved, [s.version for _, s in moved]),
        *(list(column) for column in zip(*entries, strict=True)) if entries else ([], [], [], []),
        *insert_args(out),
        len(new), len(moved),
    )
    if counts["inserted"] != len(new) or counts["moved"] != len(moved):
        raise SagaMovedOn(f"{len(new) - counts['inserted']} started and "
                          f"{len(moved) - counts['moved']} moved on elsewhere")
    return Written(list(counts["ids"]), out)
