"""The CloudEvents 1.0 envelope in structured JSON mode, and its codec.

`parse_event` is the one door through which external bytes enter: whatever is
wrong with them (encoding, JSON, envelope, data) comes out as `InvalidEvent`
with a sentence a person can read, plus the checkout session id when one can
be salvaged, so the caller can answer `CheckoutFailed(INVALID_REQUEST)` and
dead-letter the message instead of stopping the partition.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NoReturn

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails

from schemas.contract import EVENT_MODELS, NO_NUL, NO_NUL_SCHEMA, SESSION_ID_PATTERN
from schemas.limits import (
    MAX_EVENT_BYTES,
    MAX_EVENT_ID_CHARS,
    MAX_EVENT_SOURCE_CHARS,
    MAX_EVENT_SUBJECT_CHARS,
    MAX_EVENT_TYPE_CHARS,
    MAX_EXTENSION_CHARS,
    nul_problem,
)

__all__ = ["CloudEvent", "InvalidEvent", "encode_event", "make_event", "parse_event",
           "session_from_key"]

JSON_CONTENT_TYPE: Final = "application/json"

# CloudEvents: attribute names are lowercase ASCII letters and digits only.
_ATTRIBUTE_NAME: Final = re.compile(r"\A[a-z0-9]+\Z")
# RFC 3339 section 5.6 `date-time`.  Checked before pydantic parses, because
# pydantic would also take unix timestamps and other ISO 8601 shapes.
_RFC3339: Final = re.compile(
    r"\A\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})\Z"
)
# Bounds the reason, which travels in a DLQ header and a CheckoutFailed detail.
_MAX_REPORTED_ERRORS: Final = 5
# A key or name from the input, quoted in a reason, is cut to this many characters.
_MAX_QUOTED_CHARS: Final = 64
# A key worth naming as is in a reason's location (`data.items[0].sku`).
_PLAIN_KEY: Final = re.compile(r"\A[A-Za-z0-9_]{1,64}\Z")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 timestamp such as 2024-01-31T12:00:00Z")
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 timestamp string")
    return value


EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EVENT_ID_CHARS), NO_NUL, NO_NUL_SCHEMA
]
EventSource = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EVENT_SOURCE_CHARS), NO_NUL, NO_NUL_SCHEMA
]
EventType = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EVENT_TYPE_CHARS), NO_NUL, NO_NUL_SCHEMA
]
EventSubject = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_EVENT_SUBJECT_CHARS), NO_NUL, NO_NUL_SCHEMA
]
Rfc3339Time = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event whose `data` is a JSON object.

    Extension attributes (e.g. `traceparent`) are kept as model extras.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"]
    id: EventId
    source: EventSource
    type: EventType
    time: Rfc3339Time
    subject: EventSubject | None = None
    datacontenttype: Literal["application/json"] = JSON_CONTENT_TYPE
    data: dict[str, Any]

    @model_validator(mode="after")
    def _check_extensions(self) -> CloudEvent:
        for name, value in (self.model_extra or {}).items():
            if not _ATTRIBUTE_NAME.match(name):
                raise ValueError(
                    f"attribute name {_quote(name)} is not allowed: CloudEvents attribute "
                    "names are lowercase letters and digits only"
                )
            # The JSON format maps CloudEvents types onto strings, integers and
            # booleans; an object or array cannot be an attribute value.
            if value is not None and not isinstance(value, str | int):
                raise ValueError(
                    f"attribute {_quote(name)} must be a string, integer or boolean"
                )
            if isinstance(value, str):
                _check_extension_text(name, value)
        return self

    @field_serializer("time")
    def _time_utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _check_extension_text(name: str, value: str) -> None:
    if len(value) > MAX_EXTENSION_CHARS:
        raise ValueError(
            f"attribute {_quote(name)} is {len(value)} characters long, more than the limit "
            f"of {MAX_EXTENSION_CHARS}"
        )
    problem = nul_problem(value)
    if problem:
        raise ValueError(f"attribute {_quote(name)} {problem}")


def _quote(text: str) -> str:
    """``text`` from the input, safe to put in a reason: control characters
    escaped (a reason ends up in PostgreSQL and in Kafka headers) and cut short."""
    if len(text) > _MAX_QUOTED_CHARS:
        return repr(text[:_MAX_QUOTED_CHARS]) + f" (cut, {len(text)} characters)"
    return repr(text)


class InvalidEvent(Exception):
    """Raised by `parse_event` for any input that is not a valid event."""

    def __init__(self, reason: str, session_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"InvalidEvent(reason={self.reason!r}, session_id={self.session_id!r})"


# --- parsing --------------------------------------------------------------


def parse_event(
    raw: bytes, expected: Mapping[str, type[BaseModel]]
) -> tuple[CloudEvent, BaseModel]:
    """Decode one structured-mode event and validate its `data`.

    `expected` maps the `type` values allowed on the topic to their data
    model (see `schemas.contract.TOPIC_EVENT_TYPES`).
    """
    _check_size(raw)
    document = _load_json(raw)
    if not isinstance(document, dict):
        raise InvalidEvent(
            f"an event must be a JSON object, got a JSON {_json_kind(document)}"
        )
    session_id = _salvage_session_id(document)
    try:
        event = CloudEvent.model_validate(document)
    except ValidationError as exc:
        raise InvalidEvent(_describe("invalid CloudEvents envelope", exc), session_id) from exc

    model = expected.get(event.type)
    if model is None:
        allowed = ", ".join(sorted(expected)) or "none"
        raise InvalidEvent(
            f"type: unexpected event type {event.type!r} on this topic (expected: {allowed})",
            session_id,
        )
    try:
        data = model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidEvent(
            _describe(f"invalid {event.type} data", exc, prefix="data"), session_id
        ) from exc
    _check_subject(event, data, session_id)
    return event, data


def _check_size(raw: bytes) -> None:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidEvent(f"an event must be bytes, got {raw.__class__.__name__}")
    size = memoryview(raw).nbytes
    if size > MAX_EVENT_BYTES:
        # Not decoded at all: its session id stays unread, as the rest of it.
        raise InvalidEvent(
            f"the event is {size:,} bytes long, more than the limit of "
            f"{MAX_EVENT_BYTES:,} bytes (1 MB)"
        )


def _load_json(raw: bytes) -> object:
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"the event is not valid UTF-8 text ({exc})") from exc
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except ValueError as exc:  # also JSONDecodeError and the int-digits limit
        raise InvalidEvent(f"the event is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidEvent("the event is not valid JSON: it is nested too deeply") from exc


class _BadJson(ValueError):
    """JSON that Python's parser accepts but RFC 8259 interoperability forbids."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Other parsers keep the first duplicate where Python keeps the last; two
    # readers must never see two different events in the same bytes.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _BadJson(f"the key {_quote(key)} appears twice in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise _BadJson(f"{name} is not a JSON number")


def _json_kind(value: object) -> str:
    kinds: dict[type, str] = {list: "array", str: "string", bool: "boolean", int: "number",
                              float: "number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _salvage_session_id(document: Mapping[str, Any]) -> str | None:
    data = document.get("data")
    candidates = [
        data.get("checkout_session_id") if isinstance(data, dict) else None,
        document.get("subject"),
    ]
    for candidate in candidates:
        if isinstance(candidate, str) and SESSION_ID_PATTERN.match(candidate):
            return candidate
    return None


def session_from_key(key: bytes | str | None) -> str | None:
    """The session id a Kafka key names, when the body has none that can be
    read (the key is the session id by contract)."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return key if isinstance(key, str) and SESSION_ID_PATTERN.match(key) else None


def _check_subject(event: CloudEvent, data: BaseModel, session_id: str | None) -> None:
    # The subject is what the Kafka key is derived from; a mismatch means the
    # event would be ordered with another checkout's events.
    data_session = getattr(data, "checkout_session_id", None)
    if "checkout_session_id" not in type(data).model_fields or event.subject is None:
        return
    if event.subject != data_session:
        raise InvalidEvent(
            f"subject: {event.subject!r} does not match data.checkout_session_id "
            f"{data_session!r}",
            session_id,
        )


def _describe(what: str, exc: ValidationError, prefix: str = "") -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [_describe_one(error, prefix) for error in errors[:_MAX_REPORTED_ERRORS]]
    more = len(errors) - _MAX_REPORTED_ERRORS
    if more > 0:
        parts.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return f"{what}: " + "; ".join(parts)


_FRIENDLIER: Final[dict[str, str]] = {
    "missing": "is required but missing",
    "extra_forbidden": "is not a known field",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
}


def _describe_one(error: ErrorDetails, prefix: str) -> str:
    location = prefix
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            # A key from the input (an unknown field) may be anything.
            name = part if _PLAIN_KEY.match(part) else _quote(part)
            location += f".{name}" if location else name
    message = _message(error)
    return f"{location}: {message}" if location else message


def _message(error: ErrorDetails) -> str:
    if error["type"] in ("string_too_short", "too_short") and (
        error.get("ctx", {}).get("min_length") == 1
    ):
        return "must not be empty"
    template = _FRIENDLIER.get(error["type"])
    if template is None:
        return error["msg"].removeprefix("Value error, ")
    try:
        return template.format(**error.get("ctx", {}))
    except (KeyError, IndexError):
        return error["msg"]


# --- building -------------------------------------------------------------


def make_event(
    *,
    type: str,
    source: str,
    subject: str,
    data: BaseModel,
    id: str | None = None,
    time: datetime | None = None,
    extensions: Mapping[str, str] | None = None,
) -> CloudEvent:
    """Wrap `data` in a new envelope; `id` defaults to a UUID4, `time` to now (UTC).

    Refuses to build what `parse_event` would reject, so a bug shows up at
    the producer rather than in a consumer's dead-letter queue.
    """
    known = EVENT_MODELS.get(type)
    if known is not None and not isinstance(data, known):
        raise ValueError(
            f"type {type!r} carries {known.__name__} data, not {data.__class__.__name__}"
        )
    session = getattr(data, "checkout_session_id", subject)
    if session != subject:
        raise ValueError(f"subject {subject!r} differs from data.checkout_session_id {session!r}")
    extra = dict(extensions or {})
    clashing = sorted(extra.keys() & CloudEvent.model_fields.keys())
    if clashing:
        raise ValueError(f"extensions may not redefine core attributes: {', '.join(clashing)}")
    return CloudEvent.model_validate(
        {
            **extra,
            "specversion": "1.0",
            "id": id if id is not None else str(uuid.uuid4()),
            "source": source,
            "type": type,
            "time": time if time is not None else datetime.now(UTC),
            "subject": subject,
            "data": data.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )


def encode_event(event: CloudEvent) -> bytes:
    """Compact UTF-8 JSON; absent optional attributes are left out, not null."""
    return event.model_dump_json(exclude_none=True).encode("utf-8")
