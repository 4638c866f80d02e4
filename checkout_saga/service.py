"""The command-handling shell shared by the inventory, payment and orders services.

One transaction per command: the inbox row (keyed by session id and command
name), the business change and the outbox rows commit together. A second
delivery of the same command finds the inbox row and only re-sends the
recorded reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
from confluent_kafka import Message

from checkout_saga.kafka import OutgoingMessage
from checkout_saga.messages import event_message, parse_message
from checkout_saga.outbox import OutboxRelay, enqueue, insert_args, insert_sql
from checkout_saga.topics import SAGA_REPLIES
from schemas.internal import REPLY_TYPE, Command, CommandReply

log = logging.getLogger(__name__)


@dataclass

class Outcome:
    """What a handler decided: the reply (None: answered later) and other events."""

    reply: CommandReply | None
    events: list[OutgoingMessage] = field(default_factory=list)


CommandHandler = Callable[[asyncpg.Connection, Command], Awaitable[Outcome]]


@dataclass(frozen=True)

class Route:
    handler: CommandHandler
    # False for commands whose handler is idempotent by state and must run
    # again on a repeat (a void re-sent after a late authorization).
    dedupe: bool = True
    # Where the answer goes: the coordinator's reply topic, or the topic of
    # whoever else sends this command (the orders service's settlements).
    reply_topic: str = SAGA_REPLIES


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
        relay: OutboxRelay,
    ) -> None:
        self.name = name
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
        route = self._routes[type(command)]
        name = type(command).__name__
        async with self._pool.acquire() as conn, conn.transaction():
            if route.dedupe:
                fresh = await conn.fetchval(
                    f"INSERT INTO {self.schema}.inbox (checkout_session_id, command) "
                    "VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
                    command.checkout_session_id,
                    name,
                )
                if not fresh:
                    await self._resend_recorded(
                        conn, command.checkout_session_id, name, route.reply_topic
                    )
                    return
            outcome = await route.handler(conn, command)
            out = list(outcome.events)
            if outcome.reply is not None:
                message = reply_message(self.source, outcome.reply, route.reply_topic)
                out.insert(0, message)
                if route.dedupe:
                    # The recorded reply and the outbox rows in one round trip.
                    await conn.execute(
                        f"WITH recorded AS (UPDATE {self.schema}.inbox SET reply = $7 "
                        "WHERE checkout_session_id = $5 AND command = $6) "
                        + insert_sql(self.schema),
                        *insert_args(out), command.checkout_session_id, name, message.value,
                    )
                    out = []
            await enqueue(conn, self.schema, out)
        self._relay.wake()

    async def _resend_recorded(
        self, conn: asyncpg.Connection, session_id: str, name: str, topic: str = SAGA_REPLIES
    ) -> None:
        reply = await conn.fetchval(
            f"SELECT reply FROM {self.schema}.inbox WHERE checkout_session_id = $1 AND command = $2",
            session_id,
            name,
        )
        if reply is None:
            log.info("%s: %s for %s already in hand, no answer yet", self.name, name, session_id)
            return
        await enqueue(conn, self.schema, [OutgoingMessage(topic, session_id, bytes(reply))])
        log.info("%s: duplicate %s for %s: re-sent the recorded reply", self.name, name, session_id)

