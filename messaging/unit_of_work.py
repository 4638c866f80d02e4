"""One unit of work: a connection, a transaction, the outbox rows it writes, and their
publication once it has committed.

Every writer in the project has the same shape: acquire, begin, change its tables and
write its outbox rows in the same transaction, commit, then hand the rows to the relay
(the fast path; the relay's sweep would publish them anyway). Publishing before the
commit could announce a change that is then rolled back, and publishing nothing after it
would wait out the sweep, so the order lives here, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import asyncpg

from messaging.message import OutgoingMessage
from messaging.outbox import Publisher, Written, enqueue


class UnitOfWork:
    """The connection of one unit of work and the outbox rows written in it so far."""

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.written = Written()

    async def send(self, messages: Iterable[OutgoingMessage]) -> None:
        """Write ``messages`` to this schema's outbox, to be published after the commit."""
        self.written.add(await enqueue(self.conn, self.schema, messages))

    def wrote(self, written: Written) -> None:
        """Outbox rows that a statement of the caller's own wrote (a one-statement write
        of rows, log and outbox), to be published with the rest."""
        self.written.add(written)


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, schema: str, publisher: Publisher, *,
                       atomic: bool = True) -> AsyncIterator[UnitOfWork]:
    """A connection from ``pool`` in a transaction (``atomic``; without it, for a writer
    whose one statement is its own transaction, no BEGIN/COMMIT round trips), whose outbox
    rows go to ``publisher`` once it has committed, and nowhere if it raised."""
    async with pool.acquire() as conn:
        work = UnitOfWork(conn, schema)
        if atomic:
            async with conn.transaction():
                yield work
        else:
            yield work
    publisher.publish(work.written)
