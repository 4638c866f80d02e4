"""Dead letters that always fit the producer's limit (pure: no client, no I/O).

librdkafka refuses at ``produce()`` any message whose key, value and headers
(plus a few dozen bytes of record overhead) exceed the producer's
``message.max.bytes``. A careless client's 999,000-byte message passes the
broker's default limit but, with our error headers added, not our producer's:
a dead letter copied byte for byte could never be sent. So a dead letter keeps
the original bytes when everything fits, and otherwise becomes a truncated
copy (the head of the value) with headers giving the original size and its
SHA-256, so an operator can still match it with the source record.

Only the value is cut, never silently: ``dlq redrive`` refuses a truncated
copy (it would put other bytes back than were read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import traceback
from collections.abc import Mapping

from confluent_kafka import Message

from messaging import dlq_headers
from messaging.dlq_headers import ORIGINAL_KEY_SIZE, ORIGINAL_SHA256, ORIGINAL_SIZE, TRUNCATED
from messaging.kafka import DEFAULT_MESSAGE_MAX_BYTES
from messaging.message import OutgoingMessage
from schemas.contract import dlq_topic

TRUNCATION_HEADERS = (TRUNCATED, ORIGINAL_SIZE, ORIGINAL_SHA256, ORIGINAL_KEY_SIZE)

# Bytes a record costs beyond its key, value and headers (measured with
# librdkafka 2.16: 36, plus a varint or two per header); rounded up.
RECORD_OVERHEAD = 64
HEADER_OVERHEAD = 10
# What one header value, and the key, may take of a copy that had to be cut.
ERROR_BYTES = 2000
STACK_BYTES = 4000
HEADER_BYTES = 512
KEY_BYTES = 1024
_HEADER_LIMITS = {dlq_headers.ERROR: ERROR_BYTES, dlq_headers.STACK: STACK_BYTES}
# Dropped first, in this order, when even the bounded headers leave no room.
_EXPENDABLE = (dlq_headers.STACK, dlq_headers.ERROR)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[:max(0, limit)].decode("utf-8", "ignore")


def tail(text: str, limit: int) -> str:
    """The last ``limit`` UTF-8 bytes of ``text`` (a stack's end says the most)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[len(raw) - max(0, limit):].decode("utf-8", "ignore")


def wire_size(key: str, value: bytes, headers: Mapping[str, str]) -> int:
    """An upper bound of what librdkafka counts against ``message.max.bytes``."""
    return (RECORD_OVERHEAD + len(key.encode()) + len(value)
            + sum(len(k.encode()) + len(v.encode()) + HEADER_OVERHEAD for k, v in headers.items()))


def fits(message: OutgoingMessage, limit: int) -> bool:
    return wire_size(message.key, message.value, message.headers) <= limit


def fit(message: OutgoingMessage, limit: int) -> OutgoingMessage:
    """``message`` itself when it fits in ``limit`` bytes; otherwise a copy
    with every header bounded, the key cut to KEY_BYTES, the original's size
    and digest in headers, and as much of the value's head as then fits."""
    if fits(message, limit):
        return message
    headers = {k: clip(v, _HEADER_LIMITS.get(k, HEADER_BYTES)) for k, v in message.headers.items()}
    key_bytes = message.key.encode()
    # A copy cut again (a lower limit further on) keeps the first original's figures.
    headers.setdefault(ORIGINAL_SIZE, str(len(message.value)))
    headers.setdefault(ORIGINAL_SHA256, hashlib.sha256(message.value).hexdigest())
    headers[TRUNCATED] = "true"
    key = message.key
    if len(key_bytes) > KEY_BYTES:
        key = clip(message.key, KEY_BYTES)
        headers.setdefault(ORIGINAL_KEY_SIZE, str(len(key_bytes)))
    for name in _EXPENDABLE:
        if wire_size(key, b"", headers) <= limit:
            break
        headers.pop(name, None)
    room = max(0, limit - wire_size(key, b"", headers))
    return dataclasses.replace(message, key=key, value=message.value[:room], headers=headers)


def minimal(message: OutgoingMessage) -> OutgoingMessage:
    """The smallest useful form of a dead letter: no value, bounded headers and
    the original's size and digest. Sent when even the fitted copy was refused
    (a broker or topic whose limit is lower than the producer's)."""
    headers = {k: clip(v, HEADER_BYTES) for k, v in message.headers.items()
               if k not in _EXPENDABLE}
    headers.setdefault(ORIGINAL_SIZE, str(len(message.value)))
    headers.setdefault(ORIGINAL_SHA256, hashlib.sha256(message.value).hexdigest())
    headers[TRUNCATED] = "true"
    if dlq_headers.ERROR in message.headers:
        headers[dlq_headers.ERROR] = clip(message.headers[dlq_headers.ERROR], HEADER_BYTES)
    return dataclasses.replace(message, key=clip(message.key, KEY_BYTES), value=b"", headers=headers)


def dead_letter(msg: Message, error: BaseException, stage: str = "handle", *,
                limit: int = DEFAULT_MESSAGE_MAX_BYTES) -> OutgoingMessage:
    """``msg`` for its ``.dlq`` with the error in bounded headers: its original
    bytes when all fits in ``limit`` (the producer's message.max.bytes), else
    a truncated copy saying the original's size and SHA-256."""
    key = msg.key()
    stack = "".join(traceback.format_exception(error))
    return fit(OutgoingMessage(
        topic=dlq_topic(msg.topic()),
        key=key.decode("utf-8", "replace") if key else "",
        value=msg.value() or b"",
        headers={
            dlq_headers.ERROR: clip(f"{type(error).__name__}: {error}", ERROR_BYTES),
            dlq_headers.ERROR_CLASS: type(error).__name__,
            dlq_headers.STAGE: stage,
            dlq_headers.STACK: tail(stack, STACK_BYTES),
            dlq_headers.SOURCE_TOPIC: msg.topic(),
            dlq_headers.SOURCE_PARTITION: str(msg.partition()),
            dlq_headers.SOURCE_OFFSET: str(msg.offset()),
        },
    ), limit)
