"""The coordinator: feeds requests, replies and deadlines into the pure state
machine and carries out what it decides, in one transaction per event.

Concurrency is optimistic: a saga row is read, decided on and written back
with ``WHERE version = $read``; losing that race (the deadline timer moved
first) raises a transient error and the consumer loop simply runs the event
again against the fresh row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from confluent_kafka import Message

from checkout_saga import metrics, tracing
from checkout_saga.errors import PermanentError, TransientError
from checkout_saga.kafka import OutgoingMessage
from checkout_saga.messages import event_message, parse_message
from checkout_saga.outbox import OutboxRelay, enqueue, insert_args, insert_sql
from checkout_saga.topics import COMMAND_TOPICS
from checkout_saga.worker import dead_letter
from saga.commands import build_command
from saga.definition import CURRENT, DEFINITIONS, SagaDefinition
from saga.machine import MachineConfig, decide
from saga.outcomes import SOURCE, initial_context, invalid_request, result_messages
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
from schemas.envelope import InvalidEvent, parse_event
from schemas.internal import REPLY_TYPE, CommandReply

log = logging.getLogger(__name__)
SCHEMA = "saga"


class SagaMovedOn(TransientError):
    """Another worker updated the saga between our read and our write."""


@dataclass(frozen=True)
class CoordinatorConfig:
    machine: MachineConfig
    hold_ttl_seconds: float


class Coordinator:
    def __init__(self, pool: asyncpg.Pool, relay: OutboxRelay, config: CoordinatorConfig) -> None:
        self._pool = pool
        self._relay = relay
        self._config = config

    # ---- checkout.requested ------------------------------------------------

    async def handle_request(self, msg: Message) -> None:
        raw = msg.value() or b""
        try:
            event, data = parse_event(raw, TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED])
        except InvalidEvent as exc:
            await self._reject(msg, exc)
            return
        assert isinstance(data, CheckoutRequested)
        # The request's trace is kept with the saga: deadlines continue it.
        context = {**initial_context(data, event.id), **tracing.saga_context()}
        started = Started(data.checkout_session_id, context)
        decision = decide(CURRENT, self._config.machine, None, started)
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "INSERT INTO saga.instances (checkout_session_id, definition_version, status, state) "
                "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT DO NOTHING RETURNING true",
                data.checkout_session_id, CURRENT.version, decision.state.status.value,
                json.dumps(to_json(decision.state)),
            )
            if inserted:
                await self._apply(conn, CURRENT, decision, version=1)
            else:
                await self._repeat(conn, data.checkout_session_id)
        self._relay.wake()

    async def _reject(self, msg: Message, exc: InvalidEvent) -> None:
        """Bad input: the raw bytes to the dead-letter topic, and a clear answer
        to the cart where a session id can be read."""
        out = [dead_letter(msg, exc, stage="parse")]
        if exc.session_id:
            out.append(invalid_request(exc.session_id, exc.reason))
        log.warning("rejected checkout request at offset %s: %s", msg.offset(), exc.reason)
        async with self._pool.acquire() as conn, conn.transaction():
            await enqueue(conn, SCHEMA, out)
        self._relay.wake()

    async def _repeat(self, conn: asyncpg.Connection, session_id: str) -> None:
        row = await conn.fetchrow(
            "SELECT state, finished_at FROM saga.instances WHERE checkout_session_id = $1",
            session_id,
        )
        assert row is not None
        state = from_json(json.loads(row["state"]))
        if state.status.terminal:
            # Republish the same result (same ids); OrderConfirmed is not re-sent.
            await enqueue(conn, SCHEMA, result_messages(state, row["finished_at"], with_order=False))
            await self._log(conn, session_id, [("-", "repeat", "request repeated: result re-sent")])
        else:
            await self._log(conn, session_id, [("-", "repeat", "request repeated while running: ignored")])

    # ---- saga.replies and deadlines ---------------------------------------

    async def handle_reply(self, msg: Message) -> None:
        _, reply = parse_message(msg, {REPLY_TYPE: CommandReply})
        assert isinstance(reply, CommandReply)
        failure = None
        if not reply.ok:
            failure = Failure(
                reply.reason.value if reply.reason else "INVALID_REQUEST",
                reply.detail or f"{reply.command} failed",
                tuple(reply.skus or ()),
            )
        event = Replied(reply.command, reply.ok, reply.data, failure)
        await self.feed(reply.checkout_session_id, event)

    async def feed(self, session_id: str, event: SagaEvent) -> Decision:
        """Decide on one event and carry the decision out; returns it (operators read it)."""
        # No explicit transaction: _apply writes the row, its log and its
        # outbox rows in one statement guarded by the version we read.
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT state, version FROM saga.instances WHERE checkout_session_id = $1",
                session_id,
            )
            if row is None:
                raise PermanentError(f"no saga for checkout session {session_id!r}")
            state = from_json(json.loads(row["state"]))
            definition = DEFINITIONS[state.definition_version]
            decision = decide(definition, self._config.machine, state, event)
            await self._apply(conn, definition, decision, version=row["version"], previous=state)
        self._relay.wake()
        return decision

    async def fire_due_deadlines(self, limit: int = 100) -> int:
        """Feed a timeout into every saga whose deadline has passed."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT checkout_session_id, state, version, deadline_token FROM saga.instances "
                "WHERE deadline_at <= now() ORDER BY deadline_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                limit,
            )
            for row in rows:
                state = from_json(json.loads(row["state"]))
                definition = DEFINITIONS[state.definition_version]
                event = DeadlinePassed(row["deadline_token"] or "")
                decision = decide(definition, self._config.machine, state, event)
                with tracing.resumed(state.context.get(tracing.SAGA_CONTEXT_KEY),
                                     "saga deadline", state.session_id):
                    await self._apply(conn, definition, decision, row["version"], previous=state,
                                      clear_deadline=True)
        if rows:
            self._relay.wake()
        return len(rows)

    # ---- carrying out a decision ----------------------------------------------

    async def _apply(
        self,
        conn: asyncpg.Connection,
        definition: SagaDefinition,
        decision: Decision,
        version: int,
        previous: SagaState | None = None,
        clear_deadline: bool = False,
    ) -> None:
        state = decision.state
        now = datetime.now(UTC)
        out: list[OutgoingMessage] = []
        deadline: tuple[datetime | None, str | None] | None = (None, None) if clear_deadline else None
        for effect in decision.effects:
            if isinstance(effect, SendCommand):
                out.append(self._command(definition, state, effect))
            elif isinstance(effect, ScheduleDeadline):
                deadline = (now + timedelta(seconds=effect.seconds), effect.token)
            elif isinstance(effect, ClearDeadline):
                deadline = (None, None)
            elif isinstance(effect, PublishOutcome):
                out.extend(result_messages(state, now, with_order=effect.succeeded))
            elif isinstance(effect, DeadLetter):
                out.append(self._dead_letter_command(definition, state, effect))
        finished = state.status.terminal and (previous is None or not previous.status.terminal)
        sets = ["state = $3::jsonb", "status = $4", "version = version + 1", "updated_at = now()"]
        args: list[object] = [state.session_id, version, json.dumps(to_json(state)), state.status.value]
        entries = [(e.step, e.kind, e.detail) for e in decision.log]
        args += [[e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]]
        args += insert_args(out)
        if deadline is not None:
            sets += ["deadline_at = $12", "deadline_token = $13"]
            args += [deadline[0], deadline[1]]
        if finished:
            sets.append(f"finished_at = ${len(args) + 1}")
            args.append(now)
        # One round trip: the guarded update, its log entries and its outbox
        # rows; the inserts only happen when the version check passed.
        updated = await conn.fetchval(
            f"""
            WITH moved AS (
                UPDATE saga.instances SET {', '.join(sets)}
                WHERE checkout_session_id = $1 AND version = $2 RETURNING 1
            ), logged AS (
                INSERT INTO saga.step_log (checkout_session_id, step, kind, detail)
                SELECT $1, s, k, d FROM unnest($5::text[], $6::text[], $7::text[]) AS l(s, k, d)
                WHERE EXISTS (SELECT 1 FROM moved)
            ), sent AS (
                {insert_sql(SCHEMA, 8)} WHERE EXISTS (SELECT 1 FROM moved)
            )
            SELECT count(*) FROM moved
            """,
            *args,
        )
        if updated != 1:
            raise SagaMovedOn(state.session_id)
        metrics.observe_decision(decision, state.context.get(tracing.SAGA_CONTEXT_KEY))

    def _command(self, definition: SagaDefinition, state: SagaState, effect: SendCommand) -> OutgoingMessage:
        step = definition.steps[definition.index_of(effect.step)]
        command = build_command(effect.command, state, effect.attempt, self._config.hold_ttl_seconds)
        return event_message(
            COMMAND_TOPICS[step.service], effect.command, SOURCE, state.session_id, command
        )

    def _dead_letter_command(
        self, definition: SagaDefinition, state: SagaState, effect: DeadLetter
    ) -> OutgoingMessage:
        msg = self._command(definition, state, SendCommand(effect.step, effect.command, 0, True))
        return OutgoingMessage(
            dlq_topic(msg.topic), msg.key, msg.value,
            {"dlq.error": effect.detail, "dlq.stage": "compensation",
             "dlq.source.topic": msg.topic, "dlq.source.offset": "-1"},
        )

    async def _log(self, conn: asyncpg.Connection, session_id: str, entries: list[tuple[str, str, str]]) -> None:
        if entries:
            await conn.executemany(
                "INSERT INTO saga.step_log (checkout_session_id, step, kind, detail) "
                "VALUES ($1, $2, $3, $4)",
                [(session_id, *e) for e in entries],
            )
