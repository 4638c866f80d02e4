"""The command-handling shell shared by the inventory, payment and orders services.

The inbox row (keyed by session id and command name), the business change and
the outbox rows commit together. A second delivery of the same command finds
the inbox row and only re-sends the recorded reply.

``handle_batch`` runs a lane of commands in one transaction, ``execute`` one
command alone, by the same code: one statement claims every inbox row, the
handlers run on the shared connection, one statement records every reply and
writes every outbox row. Any exception rolls the whole lane back and the
consumer loop falls back to ``handle``, one command at a time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import Message

from messaging import tracing
from messaging.message import OutgoingMessage
from messaging.messages import event_message, parse_message
from messaging.outbox import Publisher, Written, insert_args, insert_sql, traced
from messaging.topics import SAGA_REPLIES
from messaging.unit_of_work import unit_of_work
from schemas.internal import REPLY_TYPE, Command, CommandReply

log = logging.getLogger(__name__)


@dataclass

class Outcome:
    """What a handler decided: the reply (None: answered later) and other events."""

    reply: CommandReply | None
    events: list[OutgoingMessage] = field(default_factory=list)


CommandHandler = Callable[[asyncpg.Connection, Command], Awaitable[Outcome]]
# The same for many commands of one type and distinct sessions, in a few
# statements for all of them; one outcome per command, in order.
ManyHandler = Callable[[asyncpg.Connection, list[Command]], Awaitable[list[Outcome]]]
# Run first in a lane's transaction: lock what the lane's commands will change,
# in one fixed order, so that two lanes can wait for each other but never deadlock.
LanePrelock = Callable[[asyncpg.Connection, Sequence[Command]], Awaitable[None]]


@dataclass(frozen=True)

class Route:
    handler: CommandHandler
    # False for commands whose handler is idempotent by state and must run
    # again on a repeat (a void re-sent after a late authorization).
    dedupe: bool = True
    # Where the answer goes: the coordinator's reply topic, or the topic of
    # whoever else sends this command (the orders service's settlements).
    reply_topic: str = SAGA_REPLIES
    many: ManyHandler | None = None


def ok(cmd: Command, **data: object) -> CommandReply:
    return CommandReply(
        checkout_session_id=cmd.checkout_session_id, command=type(cmd).__name__, ok=True, data=data
    )


def failed(cmd: Command, reason: str, detail: str, skus: list[str] | None = None) -> CommandReply:
    return CommandReply(
        checkout_session_id=cmd.checkout_session_id,
        command=type(cmd).__name__,
        ok=False,
        reason=reason,  # type: ignore[arg-type]
        detail=detail,
        skus=skus,
    )


def reply_message(source: str, reply: CommandReply, topic: str = SAGA_REPLIES) -> OutgoingMessage:
    return event_message(topic, REPLY_TYPE, source, reply.checkout_session_id, reply)


class CommandService:
    def __init__(
        self,
        name: str,
        pool: asyncpg.Pool,
        routes: Mapping[type[Command], Route],
        relay: Publisher,
        prelock: LanePrelock | None = None,
    ) -> None:
        self.name = name
        self._prelock = prelock
        self.schema = name
        self.source = f"urn:checkout-saga:{name}"
        self._pool = pool
        self._routes = routes
        self._relay = relay
        self._types = {cls.__name__: cls for cls in routes}

    async def handle(self, msg: Message) -> None:
        _, command = parse_message(msg, self._types)
        assert isinstance(command, Command)
        await self.execute(command)

    async def execute(self, command: Command) -> None:
        """One command in its own transaction (the consumer loop's one-by-one path)."""
        await self._execute([(None, command)])

    async def handle_batch(self, msgs: Sequence[Message]) -> None:
        """A lane of commands in one transaction (see the module's docstring)."""
        parsed: list[tuple[Message | None, Command]] = []
        for msg in msgs:
            _, command = parse_message(msg, self._types)
            assert isinstance(command, Command)
            parsed.append((msg, command))
        await self._execute(parsed)

    async def _execute(self, parsed: list[tuple[Message | None, Command]]) -> None:
        """Commands in one transaction. Each is counted and traced as its message
        where it comes with one (a lane); alone, the consumer loop already does."""
        claims = [(c.checkout_session_id, type(c).__name__) for _, c in parsed
                  if self._routes[type(c)].dedupe]
        out: list[OutgoingMessage] = []
        recorded: list[tuple[str, str, bytes]] = []
        repeats: dict[tuple[str, str], str] = {}
        async with unit_of_work(self._pool, self.schema, self._relay) as work:
            conn = work.conn
            if self._prelock is not None:
                await self._prelock(conn, [c for _, c in parsed])
            fresh = await self._claim(conn, claims)
            todo: list[tuple[Message | None, Command]] = []
            for msg, command in parsed:
                claim = (command.checkout_session_id, type(command).__name__)
                if self._routes[type(command)].dedupe:
                    if claim not in fresh:
                        # Handled before, or earlier in this lane: the recorded reply again.
                        repeats.setdefault(claim, self._routes[type(command)].reply_topic)
                        continue
                    fresh.discard(claim)
                todo.append((msg, command))
            for msg, command, outcome in await self._run(conn, todo):
                route = self._routes[type(command)]
                with tracing.consuming(self.name, msg) if msg else contextlib.nullcontext():
                    if outcome.reply is not None:
                        message = reply_message(self.source, outcome.reply, route.reply_topic)
                        out.append(traced(message))
                        if route.dedupe:
                            recorded.append((command.checkout_session_id, type(command).__name__,
                                             message.value))
                    out.extend(traced(m) for m in outcome.events)
            out.extend(traced(m) for m in await self._recorded_replies(conn, repeats))
            ids = await conn.fetch(
                f"WITH recorded AS (UPDATE {self.schema}.inbox i SET reply = r.v "
                "FROM unnest($5::text[], $6::text[], $7::bytea[]) AS r(s, c, v) "
                "WHERE i.checkout_session_id = r.s AND i.command = r.c) " + insert_sql(self.schema),
                *insert_args(out), *map(list, zip(*recorded, strict=True)) if recorded else ([], [], []),
            )
            work.wrote(Written([r["id"] for r in ids], out))

    async def _run(
        self, conn: asyncpg.Connection, todo: list[tuple[Message | None, Command]]
    ) -> list[tuple[Message | None, Command, Outcome]]:
        """Run the lane's commands: a type with a ``many`` handler in one call when
        no session has two commands in the lane (their order would matter),
        every other command alone, in lane order."""
        done: list[tuple[Message | None, Command, Outcome]] = []
        sessions = [c.checkout_session_id for _, c in todo]
        by_type: dict[type[Command], list[tuple[Message | None, Command]]] = {}
        for msg, command in todo:
            many = self._routes[type(command)].many
            if many is not None and len(set(sessions)) == len(sessions):
                by_type.setdefault(type(command), []).append((msg, command))
                continue
            done.append((msg, command, await self._routes[type(command)].handler(conn, command)))
        for kind, items in by_type.items():
            many = self._routes[kind].many
            assert many is not None
            outcomes = await many(conn, [c for _, c in items])
            done.extend((m, c, o) for (m, c), o in zip(items, outcomes, strict=True))
        return done

    async def _claim(self, conn: asyncpg.Connection, claims: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Insert the inbox rows; the ones that were not there yet."""
        if not claims:
            return set()
        rows = await conn.fetch(
            f"INSERT INTO {self.schema}.inbox (checkout_session_id, command) "
            "SELECT DISTINCT s, c FROM unnest($1::text[], $2::text[]) AS k(s, c) "
            "ON CONFLICT DO NOTHING RETURNING checkout_session_id, command",
            [s for s, _ in claims], [c for _, c in claims],
        )
        return {(r["checkout_session_id"], r["command"]) for r in rows}

    async def _recorded_replies(
        self, conn: asyncpg.Connection, repeats: Mapping[tuple[str, str], str]
    ) -> list[OutgoingMessage]:
        """The recorded replies of repeated commands, to send again. A repeat of a
        command handled earlier in this lane has its reply recorded by the same
        statement that sends the first one: that one send answers both."""
        if not repeats:
            return []
        rows = await conn.fetch(
            f"SELECT checkout_session_id, command, reply FROM {self.schema}.inbox "
            "WHERE (checkout_session_id, command) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[])) AND reply IS NOT NULL",
            [s for s, _ in repeats], [c for _, c in repeats],
        )
        answered = {(r["checkout_session_id"], r["command"]) for r in rows}
        for session, name in repeats:
            if (session, name) in answered:
                log.info("%s: duplicate %s for %s: re-sent the recorded reply", self.name, name, session)
            else:
                log.info("%s: %s for %s already in hand, no answer yet", self.name, name, session)
        return [OutgoingMessage(repeats[(r["checkout_session_id"], r["command"])],
                                r["checkout_session_id"], bytes(r["reply"])) for r in rows]


