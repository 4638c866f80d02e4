"""Dead letters: list what a consumer could not handle, and put it back once.

Every consumer sends what it cannot handle to ``<topic>.dlq``: the original
bytes and key, with the error, its class, the stage, the stack and the
source topic/partition/offset in ``dlq.*`` headers (``messaging.worker``).

``redrive`` produces each dead letter back onto its source topic, once: the
DLQ position (topic, partition, offset) is recorded in ``ops.redriven`` in the
same transaction that waits for the broker's ack, so a second redrive skips
it, two concurrent redrives serialize on the row, and a crash between the ack
and the commit at worst sends it again, which the handlers' inbox absorbs.
A digest of the bytes is stored with the position: a broker that lost its
data and reused an offset for another message is not mistaken for "done".

A dead letter that is a truncated copy (``dlq.truncated``: the original did
not fit the producer's limit) is listed with the original's size and digest
but never redriven: it would put other bytes back than were read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from messaging import dlq_headers
from messaging.dlq_headers import ORIGINAL_SHA256, ORIGINAL_SIZE, REDRIVEN_FROM, TRUNCATED
from messaging.kafka import AsyncProducer
from messaging.message import OutgoingMessage
from messaging.topic_reader import Record, read_topic
from schemas.contract import dlq_source, dlq_topic, is_dlq_topic

OPS_DDL = """
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.redriven (
    dlq_topic text NOT NULL,
    dlq_partition int NOT NULL,
    dlq_offset bigint NOT NULL,
    digest text NOT NULL,
    source_topic text NOT NULL,
    operator text NOT NULL,
    redriven_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
"""
_OPS_LOCK = 0x0D1A  # serializes concurrent first-time migrations


async def migrate_ops(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _OPS_LOCK)
        await conn.execute(OPS_DDL)


def dlq_name(topic: str) -> str:
    """``orders.requests`` and ``orders.requests.dlq`` both name the same dead letters."""
    return topic if is_dlq_topic(topic) else dlq_topic(topic)


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()[:32]


@dataclass(frozen=True)
class DeadLetter:
    record: Record
    redriven_at: datetime | None = None

    @property
    def truncated(self) -> bool:
        return self.record.headers.get(TRUNCATED) == "true"

    @property
    def source_topic(self) -> str:
        return self.record.headers.get(dlq_headers.SOURCE_TOPIC) or dlq_source(self.record.topic)

    def _int_header(self, name: str) -> int | None:
        raw = self.record.headers.get(name)
        try:
            return int(raw) if raw not in (None, "") else None
        except ValueError:
            return None

    def as_json(self, with_stack: bool = False) -> dict[str, Any]:
        r, h = self.record, self.record.headers
        out: dict[str, Any] = {
            "dlq_topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "timestamp": datetime.fromtimestamp(r.timestamp_ms / 1000, UTC).isoformat()
            if r.timestamp_ms > 0 else None,
            "key": r.key,
            "error": h.get(dlq_headers.ERROR, ""),
            "error_class": h.get(dlq_headers.ERROR_CLASS, ""),
            "stage": h.get(dlq_headers.STAGE, ""),
            "source_topic": self.source_topic,
            "source_partition": self._int_header(dlq_headers.SOURCE_PARTITION),
            "source_offset": self._int_header(dlq_headers.SOURCE_OFFSET),
            "redriven_from": h.get(REDRIVEN_FROM),
            "redriven": self.redriven_at is not None,
            "redriven_at": self.redriven_at.isoformat() if self.redriven_at else None,
            "size": len(r.value),
            "truncated": self.truncated,
            "original_size": self._int_header(ORIGINAL_SIZE) if self.truncated else len(r.value),
            "original_sha256": h.get(ORIGINAL_SHA256),
            "value_preview": r.value[:200].decode("utf-8", "replace"),
        }
        if with_stack:
            out["stack"] = h.get(dlq_headers.STACK, "")
        return out


async def _redriven(conn: asyncpg.Connection, topic: str) -> dict[tuple[int, int], tuple[str, datetime]]:
    rows = await conn.fetch(
        "SELECT dlq_partition, dlq_offset, digest, redriven_at FROM ops.redriven "
        "WHERE dlq_topic = $1", topic,
    )
    return {(r["dlq_partition"], r["dlq_offset"]): (r["digest"], r["redriven_at"]) for r in rows}


# Where a topic's watermarks run short (tansu), how long a read waits for nothing new.
READ_IDLE_SECONDS = 0.5


async def list_dead_letters(
    pool: asyncpg.Pool, bootstrap: str, topic: str, idle: float = READ_IDLE_SECONDS
) -> list[DeadLetter]:
    name = dlq_name(topic)
    records = await asyncio.to_thread(read_topic, bootstrap, name, idle=idle)
    async with pool.acquire() as conn:
        done = await _redriven(conn, name)
    out = []
    for r in records:
        seen = done.get((r.partition, r.offset))
        when = seen[1] if seen is not None and seen[0] == digest(r.value) else None
        out.append(DeadLetter(r, when))
    return out


def _select(
    letters: Iterable[DeadLetter], offsets: set[int] | None, key: str | None,
    partition: int | None = None,
) -> list[DeadLetter]:
    return [d for d in letters
            if (partition is None or d.record.partition == partition)
            and (offsets is None or d.record.offset in offsets)
            and (key is None or d.record.key == key)]


def _redrive_message(letter: DeadLetter) -> OutgoingMessage:
    r = letter.record
    headers = {k: v for k, v in r.headers.items() if not k.startswith(dlq_headers.PREFIX)}
    headers[REDRIVEN_FROM] = f"{r.topic}:{r.partition}:{r.offset}"
    return OutgoingMessage(letter.source_topic, r.key or "", r.value, headers)


@dataclass(frozen=True)
class RedriveResult:
    redriven: list[dict[str, Any]]
    skipped: int  # already redriven before
    truncated: int = 0  # truncated copies, never redriven

    def as_json(self) -> dict[str, Any]:
        return {"redriven": len(self.redriven), "already_redriven": self.skipped,
                "truncated_not_redriven": self.truncated, "entries": self.redriven}


async def redrive(
    pool: asyncpg.Pool,
    producer: AsyncProducer,
    letters: list[DeadLetter],
    *,
    operator: str,
    offsets: set[int] | None = None,
    key: str | None = None,
    partition: int | None = None,
    dry_run: bool = False,
) -> RedriveResult:
    """Offsets count within a partition: with `offsets`, give its `partition` too."""
    if offsets is not None and partition is None:
        raise ValueError("an offset names a dead letter only with its partition")
    selected = _select(letters, offsets, key, partition)
    chosen = [d for d in selected if not d.truncated]
    todo = [d for d in chosen if d.redriven_at is None]
    done: list[dict[str, Any]] = []
    for letter in todo:
        r = letter.record
        entry = {"partition": r.partition, "offset": r.offset, "key": r.key,
                 "source_topic": letter.source_topic}
        if dry_run:
            done.append(entry)
            continue
        async with pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO ops.redriven (dlq_topic, dlq_partition, dlq_offset, digest, "
                "source_topic, operator) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE "
                "SET digest = EXCLUDED.digest, source_topic = EXCLUDED.source_topic, "
                "operator = EXCLUDED.operator, redriven_at = now() "
                "WHERE ops.redriven.digest <> EXCLUDED.digest RETURNING true",
                r.topic, r.partition, r.offset, digest(r.value), letter.source_topic, operator,
            )
            if not fresh:  # another redrive got there first
                continue
            # Committed only once the broker has acknowledged the message.
            await producer.send([_redrive_message(letter)])
        done.append(entry)
    return RedriveResult(done, len(chosen) - len(done), len(selected) - len(chosen))
