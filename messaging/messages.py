"""Turning models into keyed CloudEvents on a topic, and back."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from messaging.errors import PermanentError
from messaging.message import OutgoingMessage
from schemas.envelope import CloudEvent, InvalidEvent, encode_event, make_event, parse_event
from schemas.limits import header_problem

if TYPE_CHECKING:  # a type only: building a message needs no Kafka client
    from confluent_kafka import Message

# Stable ids for events that may be re-sent (a republished result keeps its id).
_NAMESPACE = uuid.UUID("6f1c2a4e-2b1d-4c59-9a53-5b8f2f3d7e10")


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def event_message(
    topic: str,
    type_: str,
    source: str,
    session_id: str,
    data: BaseModel,
    *,
    id: str | None = None,
    time: datetime | None = None,
    headers: Mapping[str, str] | None = None,
) -> OutgoingMessage:
    event = make_event(type=type_, source=source, subject=session_id, data=data, id=id, time=time)
    return OutgoingMessage(topic, session_id, encode_event(event), dict(headers or {}))


def parse_consumed(
    msg: Message, expected: Mapping[str, type[BaseModel]]
) -> tuple[CloudEvent, BaseModel]:
    """A consumed event, its body and then its Kafka headers within the
    contract's limits; raises InvalidEvent, naming the session where it can
    be read, for anything else."""
    event, data = parse_event(msg.value() or b"", expected)
    problem = header_problem(msg.headers())
    if problem is not None:
        session = getattr(data, "checkout_session_id", None) or event.subject
        raise InvalidEvent(problem, session if isinstance(session, str) else None)
    return event, data


def parse_message(
    msg: Message, expected: Mapping[str, type[BaseModel]]
) -> tuple[CloudEvent, BaseModel]:
    """Parse a consumed event; bad input becomes a PermanentError, which the
    consumer loop dead-letters, so the partition moves on."""
    try:
        return parse_consumed(msg, expected)
    except InvalidEvent as exc:
        raise PermanentError(exc.reason) from exc
