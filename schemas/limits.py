"""Every limit of the external contract and the internal messages, in one place.

The contract (docs/contract.md) fixes a few of them (session ids, item
count, quantity, no U+0000, int64 amounts, 1 MB); the others are chosen so
that any real cart fits with room to spare, while a careless or hostile
producer cannot push a value into PostgreSQL that it refuses (U+0000 in text,
an integer past bigint) or make one message cost megabytes of memory, log and
dead letter. The pydantic models (``schemas.contract``, ``schemas.internal``)
and the exported JSON Schemas take their bounds from here, and the README's
"Limits" section lists them.

Text lengths count characters (code points), as JSON Schema's ``maxLength``
does; message and header sizes count bytes, as Kafka does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = [
    "MAX_ADDRESS_LINE_CHARS",
    "MAX_AMOUNT",
    "MAX_CARRIER_CHARS",
    "MAX_CITY_CHARS",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_ID_CHARS",
    "MAX_EVENT_SOURCE_CHARS",
    "MAX_EVENT_SUBJECT_CHARS",
    "MAX_EVENT_TYPE_CHARS",
    "MAX_EXTENSION_CHARS",
    "MAX_HEADERS",
    "MAX_HEADERS_BYTES",
    "MAX_HEADER_NAME_BYTES",
    "MAX_HEADER_VALUE_BYTES",
    "MAX_ID_CHARS",
    "MAX_HOLD_TTL_SECONDS",
    "MAX_ITEMS",
    "MAX_NAME_CHARS",
    "MAX_PAYMENT_METHOD_CHARS",
    "MAX_PAYMENT_TOKEN_CHARS",
    "MAX_POSTAL_CODE_CHARS",
    "MAX_PROMO_CODE_CHARS",
    "MAX_QUANTITY",
    "MAX_REASON_CHARS",
    "MAX_REGION_CHARS",
    "MAX_SESSION_ID_CHARS",
    "MAX_SKU_CHARS",
    "MAX_STATUS_CHARS",
    "MAX_TRACKING_NUMBER_CHARS",
    "NUL",
    "header_problem",
    "nul_problem",
]

# --- the whole message ------------------------------------------------------

# The contract's "1 MB", and the default `message.max.bytes` of a Kafka
# producer: the largest Kafka value `parse_event` reads at all.  It is checked
# before the bytes are decoded, so an oversized value costs no JSON parse.
MAX_EVENT_BYTES: Final = 1_000_000

# Kafka headers of one consumed message.  What we and common producers send
# (traceparent, tracestate: W3C caps it at 512 chars, baggage: 8,192 bytes,
# a framework's type hints) fits many times over.
MAX_HEADERS: Final = 32
MAX_HEADER_NAME_BYTES: Final = 256
MAX_HEADER_VALUE_BYTES: Final = 8_192
MAX_HEADERS_BYTES: Final = 16_384  # all names and values together

# --- the CloudEvents envelope -----------------------------------------------

MAX_EVENT_ID_CHARS: Final = 256  # a UUID is 36
MAX_EVENT_SOURCE_CHARS: Final = 1_024  # a URI reference
MAX_EVENT_TYPE_CHARS: Final = 128
MAX_EVENT_SUBJECT_CHARS: Final = 256  # for our types it must equal the session id anyway
MAX_EXTENSION_CHARS: Final = 1_024  # each string extension attribute (traceparent is 55)

# --- ids and codes ------------------------------------------------------------

MAX_SESSION_ID_CHARS: Final = 128  # the contract: 1-128 of [A-Za-z0-9_.:-]
MAX_ID_CHARS: Final = 128  # customer ids, order ids
MAX_SKU_CHARS: Final = 64
MAX_PROMO_CODE_CHARS: Final = 64
MAX_PAYMENT_METHOD_CHARS: Final = 64  # "card", "paypal", ...
MAX_PAYMENT_TOKEN_CHARS: Final = 1_024  # gateway tokens are tens of chars; leave room
MAX_STATUS_CHARS: Final = 64  # an order status, a reason code, a command name

# --- the shipping address ---------------------------------------------------

MAX_NAME_CHARS: Final = 256
MAX_ADDRESS_LINE_CHARS: Final = 256
MAX_CITY_CHARS: Final = 128
MAX_REGION_CHARS: Final = 128  # `state`
MAX_POSTAL_CODE_CHARS: Final = 32

# --- order events -----------------------------------------------------------

MAX_REASON_CHARS: Final = 1_000  # why customer service cancels or returns, as typed
MAX_CARRIER_CHARS: Final = 128
MAX_TRACKING_NUMBER_CHARS: Final = 128

# --- the cart -----------------------------------------------------------------

MAX_ITEMS: Final = 100
MAX_QUANTITY: Final = 1_000
# Every amount in minor units, and the cart's subtotal (the sum of quantity x
# unit_price), fits a signed 64-bit integer: PostgreSQL's bigint, and what
# most JSON readers outside Python can hold exactly.  A discount never exceeds
# the subtotal and a total never exceeds it either, so they fit too.
MAX_AMOUNT: Final = 2**63 - 1
# A soft hold lasts minutes (15 by default); a week is far past any sane
# setting and far inside what a PostgreSQL interval holds.
MAX_HOLD_TTL_SECONDS: Final = 7 * 24 * 3600

# --- checks -------------------------------------------------------------------

NUL: Final = "\x00"


def nul_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as PostgreSQL text or jsonb (None: it can)."""
    if NUL in text:
        return "must not contain the character U+0000 (NUL)"
    return None


Headers = Iterable[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


def header_problem(headers: Headers | None) -> str | None:
    """Why a consumed message's Kafka headers are over the limits, as a sentence
    a person can read; None when they are within them.

    Takes what ``confluent_kafka.Message.headers()`` returns (a list of
    ``(name, bytes | None)``, or None) or a mapping. Pure: the caller decides
    what to do with a message that fails (dead-letter it, answer
    ``CheckoutFailed`` where the session can be read).
    """
    if headers is None:
        return None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if len(pairs) > MAX_HEADERS:
        return f"the message has {len(pairs)} headers, more than the limit of {MAX_HEADERS}"
    total = 0
    for name, value in pairs:
        name_bytes = len(name.encode("utf-8", "surrogatepass"))
        if name_bytes > MAX_HEADER_NAME_BYTES:
            return (
                f"a header name is {name_bytes} bytes long, more than the limit of "
                f"{MAX_HEADER_NAME_BYTES} bytes"
            )
        value_bytes = _size(value)
        if value_bytes > MAX_HEADER_VALUE_BYTES:
            return (
                f"the header {name!r} is {value_bytes} bytes long, more than the limit "
                f"of {MAX_HEADER_VALUE_BYTES} bytes"
            )
        total += name_bytes + value_bytes
    if total > MAX_HEADERS_BYTES:
        return (
            f"the message's headers come to {total} bytes, more than the limit of "
            f"{MAX_HEADERS_BYTES} bytes"
        )
    return None


def _size(value: bytes | str | None) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(value)

