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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from confluent_kafka import Message

from messaging import dlq_headers, tracing
from messaging.errors import PermanentError, is_transient
from messaging.message import OutgoingMessage
from messaging.messages import event_message, parse_consumed, parse_message
from messaging.outbox import Publisher, Written, enqueue, traced
from messaging.topics import COMMAND_TOPICS
from messaging.unit_of_work import unit_of_work
from messaging.worker import dead_letter
from saga import metrics as saga_metrics
from saga import repository
from saga.commands import build_command
from saga.definition import CURRENT, DEFINITIONS, SagaDefinition
from saga.machine import MachineConfig, decide
from saga.outcomes import SOURCE, initial_context, rejected, result_messages
from saga.repository import Deadline, SagaRow
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
)
from schemas.contract import CHECKOUT_REQUESTED, TOPIC_EVENT_TYPES, CheckoutRequested, dlq_topic
from schemas.envelope import InvalidEvent, session_from_key
from schemas.internal import REPLY_TYPE, CommandReply

log = logging.getLogger(__name__)
SCHEMA = "saga"


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
            now = await repository.start(conn, decision.state)
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
        finished_at = await repository.start_ended(conn, state)
        if finished_at is not None:
            detail = state.failure.detail if state.failure else reason
            await repository.log(conn, [(session, "-", "rejected", detail)])
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
        loaded = await repository.load(conn, session_id)
        assert loaded is not None and loaded[0].state is not None
        saga = loaded[0]
        messages, entry = repeated(saga.state, saga.finished_at)
        await repository.log(conn, [(session_id, *entry)])
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
            loaded = await repository.load(conn, session_id)
            if loaded is None or loaded[0].state is None:
                raise PermanentError(f"no saga for checkout session {session_id!r}")
            saga, now = loaded
            state = saga.state
            definition = DEFINITIONS[state.definition_version]
            decision = decide(definition, self._config.machine, state, event)
            work.wrote(await self._apply(conn, definition, decision, version=saga.version,
                                         previous=state, now=now))
        return decision

    # ---- a lane: many requests and replies, one transaction -------------------

    async def handle_batch(self, msgs: Sequence[Message]) -> None:
        """One read of every saga row in the lane (locked), the machine in
        memory message by message, one statement writing rows, log and outbox.
        Anything unusual (bad input, a reply for no saga, a lost race) raises
        with nothing written, and the consumer loop goes one by one."""
        events = [_lane_event(msg) for msg in msgs]
        out: list[OutgoingMessage] = []
        entries: list[tuple[str, str, str, str]] = []
        decisions: list[Decision] = []
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            conn = work.conn
            # now: PostgreSQL's, read with the rows (or when first needed)
            sagas, now = await repository.lock(conn, [sid for _, sid, _ in events])
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
                            now = now or await repository.now(conn)
                        messages, entry = repeated(saga.state, saga.finished_at or now)
                        out.extend(traced(m) for m in messages)
                        entries.append((sid, *entry))
                        continue
                    else:
                        event_id, data = event
                        definition, decision = CURRENT, self._start(data, event_id)
                        saga = sagas[sid] = SagaRow(None, 0, None)
                    if now is None and _needs_time(decision):
                        now = await repository.now(conn)
                    plan = self._plan(definition, decision, saga.state, now)
                    saga.absorb(decision.state, plan.deadline, plan.finished_at)
                    out.extend(plan.out)
                    entries.extend((sid, *e) for e in plan.entries)
                    decisions.append(decision)
            work.wrote(await repository.write(conn, sagas, entries, out))
        for decision in decisions:
            saga_metrics.observe_decision(decision, decision.state.context.get(tracing.SAGA_CONTEXT_KEY))

    async def fire_due_deadlines(self, limit: int = 100) -> int:
        """Feed a timeout into every saga whose deadline has passed."""
        async with unit_of_work(self._pool, SCHEMA, self._relay) as work:
            conn = work.conn
            due = await repository.due(conn, limit)
            for saga in due:
                try:
                    async with conn.transaction():  # a savepoint: one bad saga is undone alone
                        work.wrote(await self._fire_deadline(conn, saga))
                except Exception as exc:
                    if is_transient(exc):
                        raise  # the whole pass again, later
                    await self._park(conn, saga.session_id, exc)
        return len(due)

    async def _fire_deadline(self, conn: asyncpg.Connection, due: repository.Due) -> Written:
        state = due.saga_state()
        definition = DEFINITIONS[state.definition_version]
        decision = decide(definition, self._config.machine, state, DeadlinePassed(due.token))
        with tracing.resumed(state.context.get(tracing.SAGA_CONTEXT_KEY),
                             "saga deadline", state.session_id):
            return await self._apply(conn, definition, decision, due.version,
                                     previous=state, clear_deadline=True, now=due.now)

    async def _park(self, conn: asyncpg.Connection, session_id: str, exc: Exception) -> None:
        """A saga whose deadline cannot be carried out (a bug, a corrupt row)
        would fail every pass, and every saga due after it with it: it loses
        its deadline, is marked stuck with the error in its log, and waits for
        an operator (`saga list --stuck`)."""
        detail = f"deadline could not be handled ({type(exc).__name__}: {exc}); saga stuck"[:2000]
        log.error("saga %s: %s", session_id, detail)
        saga_metrics.DEADLINES_PARKED.inc()
        await repository.park(conn, session_id, detail)

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
            now = await repository.now(conn)
        plan = self._plan(definition, decision, previous, now, clear_deadline)
        saga = SagaRow(previous, version, None)
        saga.absorb(state, plan.deadline, plan.finished_at)
        written = await repository.write(conn, {state.session_id: saga},
                                         [(state.session_id, *e) for e in plan.entries], plan.out)
        saga_metrics.observe_decision(decision, state.context.get(tracing.SAGA_CONTEXT_KEY))
        return written

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
