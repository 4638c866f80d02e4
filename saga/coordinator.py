"""The coordinator: feeds requests, replies and deadlines into the pure state
machine and carries out what it decides, in one transaction per event.

Concurrency is optimistic: a saga row is read, decided on and written back
with ``WHERE version = $read``; losing that race (the deadline timer moved
first) raises a transient error and the consumer loop simply runs the event
again against the fresh row.

Every time is PostgreSQL's: a deadline is written as ``now() + secs`` and fired
by ``deadline_at <= now()``, a finish time (the result's CloudEvents ``time``
too) is the transaction's ``now()``. A worker whose clock is off never times a
step out early or late.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from confluent_kafka import Message

from messaging import dlq_headers, tracing
from messaging.errors import PermanentError, TransientError, is_transient
from messaging.message import OutgoingMessage
from messaging.messages import event_message, parse_consumed, parse_message
from messaging.outbox import Publisher, Written, enqueue, insert_args, insert_sql, traced
from messaging.topics import COMMAND_TOPICS
from messaging.unit_of_work import unit_of_work
from messaging.worker import dead_letter
from saga import metrics as saga_metrics
from saga.commands import build_command
from saga.definition import CURRENT, DEFINITIONS, SagaDefinition
from saga.machine import MachineConfig, decide
from saga.outcomes import SOURCE, initial_context, rejected, result_messages
from saga.state import (
    ClearDeadline,
    DeadLetter,
    DeadlinePassed,
    Decision,
    Failure,
    PublishOutcome,
    Replied,
    SagaEvent,
    SagaState,
    ScheduleDeadline,
    SendCommand,
    Started,
    from_json,
    to_json,
)
from schemas.contract import CHECKOUT_REQUESTED, TOPIC_EVENT_TYPES, CheckoutRequested, dlq_topic
from schemas.envelope import InvalidEvent, session_from_key
from schemas.internal import REPLY_TYPE, CommandReply

log = logging.getLogger(__name__)
SCHEMA = "saga"


class SagaMovedOn(TransientError):
    """Another worker updated the saga between our read and our write."""


# A deadline to write: seconds from PostgreSQL's now() (None: no deadline) and its token.
Deadline = tuple[float | None, str | None]


@dataclass
class Plan:
    out: list[OutgoingMessage]
    entries: list[tuple[str, str, str]]
    deadline: Deadline | None  # None: unchanged
    finished_at: datetime | None


def _needs_time(decision: Decision) -> bool:
    """Whether carrying the decision out needs the time (a result's, a finish's)."""
    return decision.state.status.terminal or any(
        isinstance(e, PublishOutcome) for e in decision.effects)


async def _db_now(conn: asyncpg.Connection) -> datetime:
    now: datetime = await conn.fetchval("SELECT now()")
    return now


@dataclass(frozen=True)
class CoordinatorConfig:
    machine: MachineConfig
    hold_ttl_seconds: float


class Coordinator:
    def __init__(self, pool: asyncpg.Pool, relay: Publisher, config: CoordinatorConfig) -> None:
        self._pool = pool
        self._relay = relay
        self._config = config

    # ---- checkout.requested ------------------------------------------------

    async def handle_request(self, msg: Message) -> None:
        try:
            event, data = parse_consumed(msg, TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED])
        except InvalidEvent as exc:
            await self._reject(msg, exc)
            return
        assert isinstance(data, CheckoutRequested)
        decision = self._start(data, event.id)
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            conn = work.conn
            now = await conn.fetchval(
                "INSERT INTO saga.instances (checkout_session_id, definition_version, status, state) "
                "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING now()",
                data.checkout_session_id, CURRENT.version, decision.state.status.value,
                json.dumps(to_json(decision.state)),
            )
            if now is not None:
                work.wrote(await self._apply(conn, CURRENT, decision, version=1, now=now))
            else:
                work.wrote(await self._repeat(conn, data.checkout_session_id))

    async def _reject(self, msg: Message, exc: InvalidEvent) -> None:
        """Bad input: the raw bytes to the dead-letter topic and, where a
        session id can be read (from the body, else the Kafka key), the
        session's one result. A session seen for the first time ends here,
        FAILED INVALID_REQUEST; one that has ended republishes its own result;
        one still running answers when it ends."""
        session = exc.session_id or session_from_key(msg.key())
        log.warning("rejected checkout request at %s[%s]@%s: %s",
                    msg.topic(), msg.partition(), msg.offset(), exc.reason)
        out = [dead_letter(msg, exc, stage="parse")]
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            if session is not None:
                out += await self._answer_rejected(work.conn, session, exc.reason)
            await work.send(out)

    async def _answer_rejected(
        self, conn: asyncpg.Connection, session: str, reason: str
    ) -> list[OutgoingMessage]:
        state = rejected(session, reason)
        finished_at = await conn.fetchval(
            "INSERT INTO saga.instances (checkout_session_id, definition_version, status, state, "
            "finished_at) VALUES ($1, $2, $3, $4::jsonb, now()) ON CONFLICT DO NOTHING "
            "RETURNING finished_at",
            session, state.definition_version, state.status.value, json.dumps(to_json(state)),
        )
        if finished_at is not None:
            await self._log(conn, session, [("-", "rejected", state.failure.detail)])  # type: ignore[union-attr]
            return result_messages(state, finished_at, with_order=False)
        return await self._repeated(conn, session)

    def _start(self, data: CheckoutRequested, event_id: str) -> Decision:
        # The request's trace is kept with the saga: deadlines continue it.
        context = {**initial_context(data, event_id), **tracing.saga_context()}
        return decide(CURRENT, self._config.machine, None, Started(data.checkout_session_id, context))

    async def _repeat(self, conn: asyncpg.Connection, session_id: str) -> Written:
        return await enqueue(conn, SCHEMA, await self._repeated(conn, session_id))

    async def _repeated(self, conn: asyncpg.Connection, session_id: str) -> list[OutgoingMessage]:
        """What a request for an existing saga gets (see ``repeated``), logged."""
        row = await conn.fetchrow(
            "SELECT state, finished_at FROM saga.instances WHERE checkout_session_id = $1",
            session_id,
        )
        assert row is not None
        messages, entry = repeated(from_json(json.loads(row["state"])), row["finished_at"])
        await self._log(conn, session_id, [entry])
        return messages

    # ---- saga.replies and deadlines ---------------------------------------

    async def handle_reply(self, msg: Message) -> None:
        _, reply = parse_message(msg, {REPLY_TYPE: CommandReply})
        assert isinstance(reply, CommandReply)
        await self.feed(reply.checkout_session_id, replied(reply))

    async def feed(self, session_id: str, event: SagaEvent) -> Decision:
        """Decide on one event and carry the decision out; returns it (operators read it)."""
        # No explicit transaction: _apply writes the row, its log and its
        # outbox rows in one statement guarded by the version we read.
        async with unit_of_work(self._pool, SCHEMA, self._relay, atomic=False) as work:
            conn = work.conn
            row = await conn.fetchrow(
                "SELECT state, version, now() AS now FROM saga.instances "
                "WHERE checkout_session_id = $1",
                session_id,
            )
            if row is None:
                raise PermanentError(f"no saga for checkout session {session_id!r}")
            state = from_json(json.loads(row["state"]))
            definition = DEFINITIONS[state.definition_version]
            decision = decide(definition, self._config.machine, state, event)
            work.wrote(await self._apply(conn, definition, decision, version=row["version"],
                                         previous=state, now=row["now"]))
        return decision

    # ---- a lane: many requests and replies, one transaction -------------------

    async def handle_batch(self, msgs: Sequence[Message]) -> None:
        """One read of every saga row in the lane (locked), the machine in
        memory message by message, one statement writing rows, log and outbox.
        Anything unusual (bad input, a reply for no saga, a lost race) raises
        with nothing written, and the consumer loop goes one by one."""
        events = [_lane_event(msg) for msg in msgs]
        now: datetime | None = None  # PostgreSQL's, read with the rows (or when first needed)
        sagas: dict[str, LaneSaga] = {}
        out: list[OutgoingMessage] = []
        entries: list[tuple[str, str, str, str]] = []
        decisions: list[Decision] = []
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            conn = work.conn
            rows = await conn.fetch(
                "SELECT checkout_session_id, state, version, finished_at, now() AS now "
                "FROM saga.instances WHERE checkout_session_id = ANY($1::text[]) FOR UPDATE",
                list(dict.fromkeys(sid for _, sid, _ in events)),
            )
            for row in rows:
                now = row["now"]
                sagas[row["checkout_session_id"]] = LaneSaga(
                    from_json(json.loads(row["state"])), row["version"], row["finished_at"])
            for msg, sid, event in events:
                with tracing.consuming("coordinator", msg):
                    saga = sagas.get(sid)
                    if isinstance(event, Replied):
                        if saga is None or saga.state is None:
                            raise PermanentError(f"no saga for checkout session {sid!r}")
                        definition = DEFINITIONS[saga.state.definition_version]
                        decision = decide(definition, self._config.machine, saga.state, event)
                    elif saga is not None:
                        assert saga.state is not None
                        if saga.finished_at is None and saga.state.status.terminal:
                            now = now or await _db_now(conn)
                        messages, entry = repeated(saga.state, saga.finished_at or now)
                        out.extend(traced(m) for m in messages)
                        entries.append((sid, *entry))
                        continue
                    else:
                        event_id, data = event
                        definition, decision = CURRENT, self._start(data, event_id)
                        saga = sagas[sid] = LaneSaga(None, 0, None)
                    if now is None and _needs_time(decision):
                        now = await _db_now(conn)
                    plan = self._plan(definition, decision, saga.state, now)
                    saga.absorb(decision.state, plan)
                    out.extend(plan.out)
                    entries.extend((sid, *e) for e in plan.entries)
                    decisions.append(decision)
            work.wrote(await _write_lane(conn, sagas, entries, out))
        for decision in decisions:
            saga_metrics.observe_decision(decision, decision.state.context.get(tracing.SAGA_CONTEXT_KEY))

    async def fire_due_deadlines(self, limit: int = 100) -> int:
        """Feed a timeout into every saga whose deadline has passed."""
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            conn = work.conn
            rows = await conn.fetch(
                "SELECT checkout_session_id, state, version, deadline_token, now() AS now "
                "FROM saga.instances WHERE deadline_at <= now() ORDER BY deadline_at LIMIT $1 "
                "FOR UPDATE SKIP LOCKED",
                limit,
            )
            for row in rows:
                try:
                    async with conn.transaction():  # a savepoint: one bad saga is undone alone
                        work.wrote(await self._fire_deadline(conn, row))
                except Exception as exc:
                    if is_transient(exc):
                        raise  # the whole pass again, later
                    await self._park(conn, row["checkout_session_id"], exc)
        return len(rows)

    async def _fire_deadline(self, conn: asyncpg.Connection, row: asyncpg.Record) -> Written:
        state = from_json(json.loads(row["state"]))
        definition = DEFINITIONS[state.definition_version]
        decision = decide(definition, self._config.machine, state,
                          DeadlinePassed(row["deadline_token"] or ""))
        with tracing.resumed(state.context.get(tracing.SAGA_CONTEXT_KEY),
                             "saga deadline", state.session_id):
            return await self._apply(conn, definition, decision, row["version"],
                                     previous=state, clear_deadline=True, now=row["now"])

    async def _park(self, conn: asyncpg.Connection, session_id: str, exc: Exception) -> None:
        """A saga whose deadline cannot be carried out (a bug, a corrupt row)
        would fail every pass, and every saga due after it with it: it loses
        its deadline, is marked stuck with the error in its log, and waits for
        an operator (`saga list --stuck`)."""
        detail = f"deadline could not be handled ({type(exc).__name__}: {exc}); saga stuck"[:2000]
        log.error("saga %s: %s", session_id, detail)
        saga_metrics.DEADLINES_PARKED.inc()
        await conn.execute(
            "UPDATE saga.instances SET deadline_at = NULL, deadline_token = NULL, "
            "state = jsonb_set(state, '{stuck}', 'true'), version = version + 1, "
            "updated_at = now() WHERE checkout_session_id = $1", session_id)
        await self._log(conn, session_id, [("-", "deadline-error", detail)])

    # ---- carrying out a decision ----------------------------------------------

    def _plan(
        self,
        definition: SagaDefinition,
        decision: Decision,
        previous: SagaState | None,
        now: datetime | None,
        clear_deadline: bool = False,
    ) -> Plan:
        """What carrying out a decision writes: its outgoing messages (with the
        current span's traceparent), log entries, deadline and finish time.
        ``now`` is PostgreSQL's (needed only when the decision publishes or ends)."""
        state = decision.state
        out: list[OutgoingMessage] = []
        deadline: Deadline | None = (None, None) if clear_deadline else None
        for effect in decision.effects:
            if isinstance(effect, SendCommand):
                out.append(self._command(definition, state, effect))
            elif isinstance(effect, ScheduleDeadline):
                deadline = (effect.seconds, effect.token)
            elif isinstance(effect, ClearDeadline):
                deadline = (None, None)
            elif isinstance(effect, PublishOutcome):
                assert now is not None, "a result needs PostgreSQL's time"
                out.extend(result_messages(state, now, with_order=effect.succeeded))
            elif isinstance(effect, DeadLetter):
                out.append(self._dead_letter_command(definition, state, effect))
        finished = state.status.terminal and (previous is None or not previous.status.terminal)
        assert now is not None or not finished, "a finish needs PostgreSQL's time"
        return Plan(
            [traced(m) for m in out],
            [(e.step, e.kind, e.detail) for e in decision.log],
            deadline,
            now if finished else None,
        )

    async def _apply(
        self,
        conn: asyncpg.Connection,
        definition: SagaDefinition,
        decision: Decision,
        version: int,
        previous: SagaState | None = None,
        clear_deadline: bool = False,
        now: datetime | None = None,
    ) -> Written:
        state = decision.state
        if now is None and _needs_time(decision):
            now = await _db_now(conn)
        plan = self._plan(definition, decision, previous, now, clear_deadline)
        sets = ["state = $3::jsonb", "status = $4", "version = version + 1", "updated_at = now()"]
        args: list[object] = [state.session_id, version, json.dumps(to_json(state)), state.status.value]
        entries = plan.entries
        args += [[e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]]
        args += insert_args(plan.out)
        if plan.deadline is not None:  # on PostgreSQL's clock, which fires it
            sets += ["deadline_at = now() + make_interval(secs => $12::float8)",
                     "deadline_token = $13"]
            args += [plan.deadline[0], plan.deadline[1]]
        if plan.finished_at is not None:
            sets.append(f"finished_at = ${len(args) + 1}")
            args.append(plan.finished_at)
        # One round trip: the guarded update, its log entries and its outbox
        # rows; the inserts only happen when the version check passed.
        result = await conn.fetchrow(
            f"""
            WITH moved AS (
                UPDATE saga.instances SET {', '.join(sets)}
                WHERE checkout_session_id = $1 AND version = $2 RETURNING 1
            ), logged AS (
                INSERT INTO saga.step_log (checkout_session_id, step, kind, detail)
                SELECT $1, s, k, d FROM unnest($5::text[], $6::text[], $7::text[]) AS l(s, k, d)
                WHERE EXISTS (SELECT 1 FROM moved)
            ), sent AS (
                {insert_sql(SCHEMA, 8, where="EXISTS (SELECT 1 FROM moved)")}
            )
            SELECT (SELECT count(*) FROM moved) AS moved, ARRAY(SELECT id FROM sent) AS ids
            """,
            *args,
        )
        if result["moved"] != 1:
            raise SagaMovedOn(state.session_id)
        saga_metrics.observe_decision(decision, state.context.get(tracing.SAGA_CONTEXT_KEY))
        return Written(list(result["ids"]), plan.out)

    def _command(self, definition: SagaDefinition, state: SagaState, effect: SendCommand) -> OutgoingMessage:
        step = definition.steps[definition.index_of(effect.step)]
        command = build_command(effect.command, state, effect.attempt, self._config.hold_ttl_seconds)
        return event_message(
            COMMAND_TOPICS[step.service], effect.command, SOURCE, state.session_id, command
        )

    def _dead_letter_command(
        self, definition: SagaDefinition, state: SagaState, effect: DeadLetter
    ) -> OutgoingMessage:
        # The command as last sent: its attempt number is the one that went unanswered.
        last = SendCommand(effect.step, effect.command, max(state.attempt, 1),
                           compensation=effect.stage == "compensation")
        msg = self._command(definition, state, last)
        return OutgoingMessage(
            dlq_topic(msg.topic), msg.key, msg.value,
            {dlq_headers.ERROR: effect.detail, dlq_headers.STAGE: effect.stage,
             dlq_headers.SOURCE_TOPIC: msg.topic, dlq_headers.SOURCE_OFFSET: "-1"},
        )

    async def _log(self, conn: asyncpg.Connection, session_id: str, entries: list[tuple[str, str, str]]) -> None:
        if entries:
            await conn.executemany(
                "INSERT INTO saga.step_log (checkout_session_id, step, kind, detail) "
                "VALUES ($1, $2, $3, $4)",
                [(session_id, *e) for e in entries],
            )


def repeated(
    state: SagaState, finished_at: datetime | None
) -> tuple[list[OutgoingMessage], tuple[str, str, str]]:
    """A request for a saga that exists: its result again (same ids, no
    OrderConfirmed) once it has one, and the step-log entry saying so."""
    if state.status.terminal:
        assert finished_at is not None, "an ended saga has its finish time"
        return (result_messages(state, finished_at, with_order=False),
                ("-", "repeat", "request repeated: result re-sent"))
    return [], ("-", "repeat", "request repeated while running: ignored")


def replied(reply: CommandReply) -> Replied:
    failure = None
    if not reply.ok:
        failure = Failure(
            reply.reason.value if reply.reason else "INVALID_REQUEST",
            reply.detail or f"{reply.command} failed",
            tuple(reply.skus or ()),
        )
    return Replied(reply.command, reply.ok, reply.data, failure)


def _lane_event(msg: Message) -> tuple[Message, str, Replied | tuple[str, CheckoutRequested]]:
    if msg.topic() == CHECKOUT_REQUESTED:
        try:
            event, data = parse_consumed(msg, TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED])
        except InvalidEvent as exc:  # one by one, it is rejected with its answer
            raise PermanentError(exc.reason) from exc
        assert isinstance(data, CheckoutRequested)
        return msg, data.checkout_session_id, (event.id, data)
    _, reply = parse_message(msg, {REPLY_TYPE: CommandReply})
    assert isinstance(reply, CommandReply)
    return msg, reply.checkout_session_id, replied(reply)


@dataclass
class LaneSaga:
    """One saga as a lane leaves it: the state after its last event, and what
    the lane's write must change on its row."""

    state: SagaState | None  # None: not started before this lane
    version: int  # as read (0: a new row)
    finished_at: datetime | None
    changed: bool = False
    deadline: Deadline | None = None

    def absorb(self, state: SagaState, plan: Plan) -> None:
        self.state, self.changed = state, True
        if plan.deadline is not None:
            self.deadline = plan.deadline
        if plan.finished_at is not None:
            self.finished_at = plan.finished_at


async def _write_lane(
    conn: asyncpg.Connection,
    sagas: dict[str, LaneSaga],
    entries: list[tuple[str, str, str, str]],
    out: list[OutgoingMessage],
) -> Written:
    """New rows, guarded updates, log entries and outbox rows in one statement."""
    new = [(sid, s) for sid, s in sagas.items() if s.changed and s.version == 0]
    moved = [(sid, s) for sid, s in sagas.items() if s.changed and s.version > 0]

    def columns(rows: list[tuple[str, LaneSaga]], number: list[int]) -> list[list[Any]]:
        states = [s.state for _, s in rows]
        return [
            [sid for sid, _ in rows],
            number,
            [state.status.value for state in states],  # type: ignore[union-attr]
            [json.dumps(to_json(state)) for state in states],  # type: ignore[arg-type]
            [s.deadline is not None for _, s in rows],
            [s.deadline[0] if s.deadline else None for _, s in rows],
            [s.deadline[1] if s.deadline else None for _, s in rows],
            [s.finished_at for _, s in rows],
        ]

    counts = await conn.fetchrow(
        f"""
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
            SELECT * FROM unnest($17::text[], $18::text[], $19::text[], $20::text[])
        ), sent AS (
            {insert_sql(SCHEMA, 21)}
        )
        SELECT (SELECT count(*) FROM inserted) AS inserted, (SELECT count(*) FROM moved) AS moved,
               ARRAY(SELECT id FROM sent) AS ids
        """,
        # New rows carry their definition's version; moved rows the row version they were read at.
        *columns(new, [s.state.definition_version for _, s in new]),  # type: ignore[union-attr]
        *columns(moved, [s.version for _, s in moved]),
        *(list(column) for column in zip(*entries, strict=True)) if entries else ([], [], [], []),
        *insert_args(out),
    )
    if counts["inserted"] != len(new) or counts["moved"] != len(moved):
        raise SagaMovedOn(f"{len(new) - counts['inserted']} started and "
                          f"{len(moved) - counts['moved']} moved on elsewhere")
    return Written(list(counts["ids"]), out)
