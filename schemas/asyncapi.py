"""The AsyncAPI 3.0 document of the external contract, for the teams around us.

Channels are the contract's topics (and the dead-letter topics of those we
read), messages the event types, and each payload is the whole CloudEvent
with its `data` typed, built by `schemas.export.event_schema` so the document
and the JSON Schemas in `schemas/json/` cannot disagree. Operations are seen
from the checkout saga: it *receives* what the cart, customer service and the
warehouse write and *sends* the rest. Generated from the models and checked
in; a unit test fails when it drifts.

    python -m schemas.asyncapi        # rewrite schemas/asyncapi.yaml
"""

from __future__ import annotations

import copy
import importlib.metadata
import sys
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from schemas.contract import (
    CHECKOUT_REQUESTED,
    CHECKOUT_RESULTS,
    FULFILLMENT_EVENTS,
    ORDERS_CONFIRMED,
    ORDERS_EVENTS,
    ORDERS_REQUESTS,
    TOPIC_EVENT_TYPES,
    dlq_topic,
)
from schemas.export import event_schema
from schemas.limits import (
    MAX_EVENT_BYTES,
    MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
)

__all__ = ["DEFAULT_PATH", "build_document", "is_stale", "main", "render", "write_document"]

DEFAULT_PATH: Final = Path(__file__).parent / "asyncapi.yaml"
ASYNCAPI_VERSION: Final = "3.0.0"
_KAFKA_BINDING: Final = "0.5.0"
_SCHEMAS: Final = "#/components/schemas/"
_DEAD_LETTER: Final = "DeadLetter"

Action = Literal["send", "receive"]

# The contract's topic table, seen from the checkout saga: who writes each
# topic and who reads it. A test checks it against the topics our workers
# actually consume (messaging.topics.CONSUMED).
_TOPICS: Final[dict[str, tuple[Action, str]]] = {
    CHECKOUT_REQUESTED: ("receive", "Written by the cart to start a checkout; read by the saga."),
    CHECKOUT_RESULTS: ("send", "The outcome of every checkout, for the cart."),
    ORDERS_CONFIRMED: ("send", "Confirmed orders, for the warehouse to fulfil."),
    ORDERS_REQUESTS: ("receive", "Cancel and return requests from customer service."),
    ORDERS_EVENTS: ("send", "Every change of an order, for anyone who cares."),
    FULFILLMENT_EVENTS: ("receive", "Shipments, deliveries and returns, from the warehouse."),
}

_SUMMARIES: Final[dict[str, str]] = {
    "CheckoutRequested": "A cart asks for a checkout: items at the prices shown, payment, address.",
    "CheckoutSucceeded": "The checkout succeeded: the order id and the amounts charged.",
    "CheckoutFailed": "The checkout failed, with a reason code and a sentence a person can read.",
    "OrderConfirmed": "An order is confirmed and paid: what the warehouse ships.",
    "CancelOrderRequested": "Customer service asks to cancel an order before shipment.",
    "ReturnRequested": "Customer service asks to start a return.",
    "OrderCancelled": "An order was cancelled; its payment voided or refunded, its stock back.",
    "OrderShipped": "An order left the warehouse.",
    "OrderDelivered": "An order reached the customer.",
    "ReturnInitiated": "A return was accepted and is awaited at the warehouse.",
    "OrderReturned": "A returned order arrived back; it is refunded and restocked.",
    "OrderStatusChanged": "An order moved from one status to another.",
    "OrderRequestRejected": "A cancel or return request could not be honoured; nothing changed.",
    "ReturnReceived": "The warehouse received a returned order.",
}

# The headers `messaging.worker.dead_letter` writes; a test keeps them equal.
DEAD_LETTER_HEADERS: Final[dict[str, str]] = {
    "dlq.error": "The error, as `Class: message`.",
    "dlq.error.class": "The error's class name.",
    "dlq.stage": "Where handling failed (e.g. parse, handle).",
    "dlq.stack": "The end of the stack trace.",
    "dlq.source.topic": "The topic the message was read from.",
    "dlq.source.partition": "Its partition.",
    "dlq.source.offset": "Its offset.",
}


def build_document(version: str | None = None) -> dict[str, Any]:
    """The whole AsyncAPI document as plain data."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type in sorted({t for types in TOPIC_EVENT_TYPES.values() for t in types}):
        model = next(types[event_type] for types in TOPIC_EVENT_TYPES.values()
                     if event_type in types)
        payload = _hoist(event_schema(event_type, model), schemas)
        schemas[f"{event_type}Event"] = payload
        messages[event_type] = _message(event_type)
    schemas[_DEAD_LETTER] = {"type": "string", "format": "binary",
                             "description": "The original bytes, exactly as they were read."}
    messages[_DEAD_LETTER] = _dead_letter_message()

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, (action, description) in _TOPICS.items():
        channel_id = _camel(topic)
        channels[channel_id] = {
            "address": topic,
            "description": description,
            "messages": {t: {"$ref": f"#/components/messages/{t}"}
                         for t in TOPIC_EVENT_TYPES[topic]},
        }
        operations[f"{action}{channel_id[0].upper()}{channel_id[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"The checkout saga {'reads' if action == 'receive' else 'writes'} "
                       f"{topic}.",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{t}"}
                         for t in TOPIC_EVENT_TYPES[topic]],
        }
        if action == "receive":  # what we read and cannot handle goes to its .dlq
            dlq_id = f"{channel_id}Dlq"
            channels[dlq_id] = {
                "address": dlq_topic(topic),
                "description": f"Messages of {topic} that could not be handled, for operators.",
                "messages": {_DEAD_LETTER: {"$ref": f"#/components/messages/{_DEAD_LETTER}"}},
            }
            operations[f"send{dlq_id[0].upper()}{dlq_id[1:]}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{dlq_id}"},
                "summary": f"The checkout saga dead-letters what it cannot handle on {topic}.",
                "messages": [{"$ref": f"#/channels/{dlq_id}/messages/{_DEAD_LETTER}"}],
            }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Checkout saga",
            "version": version or importlib.metadata.version("checkout-saga"),
            "description": (
                "The external contract of the checkout saga. Every message is a CloudEvents "
                "1.0 event in structured JSON mode (the whole event is the Kafka value, UTF-8 "
                "JSON); the Kafka key is the checkout session id, so all events of one "
                "checkout are on one partition, in order. Money is an integer count of the "
                "currency's minor unit. The contract only grows: fields are added, never "
                "renamed or dropped. Limits: a value is at most "
                f"{MAX_EVENT_BYTES:,} bytes; {_HEADER_LIMITS} Text fields never contain "
                "U+0000, and every amount and a cart's subtotal fit a signed 64-bit integer; "
                "each payload schema gives its field limits. A message that fails a limit "
                "gets CheckoutFailed INVALID_REQUEST where its session id can be read, "
                "and goes to the topic's .dlq."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "Apache Kafka; the same list as KAFKA_BOOTSTRAP_SERVERS.",
                "variables": {"bootstrap": {"default": "kafka-1:9092",
                                            "description": "One bootstrap host:port."}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "messages": messages,
            "correlationIds": {
                "checkoutSession": {
                    "description": "The checkout session id, also the Kafka key.",
                    "location": "$message.payload#/subject",
                }
            },
        },
    }


# JSON Schema counts characters, Kafka bytes: only the count is a keyword.
_HEADER_LIMITS: Final = (
    f"Kafka headers: at most {MAX_HEADERS}, each name at most {MAX_HEADER_NAME_BYTES:,} bytes "
    f"and each value at most {MAX_HEADER_VALUE_BYTES:,} bytes, {MAX_HEADERS_BYTES:,} bytes "
    "in all."
)


def _message(event_type: str) -> dict[str, Any]:
    return {
        "name": event_type,
        "title": event_type,
        "summary": _SUMMARIES.get(event_type, f"A {event_type} event."),
        "contentType": "application/json",
        "payload": {"$ref": f"{_SCHEMAS}{event_type}Event"},
        "headers": {
            "type": "object",
            "description": _HEADER_LIMITS,
            "maxProperties": MAX_HEADERS,
            "properties": {"traceparent": {
                "type": "string",
                "description": "W3C trace context of the checkout, when tracing is on."}},
        },
        "correlationId": {"$ref": "#/components/correlationIds/checkoutSession"},
        "bindings": {"kafka": {"key": {"type": "string", "description": "The checkout session id."},
                               "bindingVersion": _KAFKA_BINDING}},
    }


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": _DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A message that could not be handled: its original bytes, the error in headers.",
        "contentType": "application/octet-stream",
        "payload": {"$ref": f"{_SCHEMAS}{_DEAD_LETTER}"},
        "headers": {
            "type": "object",
            "properties": {name: {"type": "string", "description": text}
                           for name, text in DEAD_LETTER_HEADERS.items()},
        },
        "bindings": {"kafka": {"key": {"type": "string",
                                       "description": "The original key (the session id)."},
                               "bindingVersion": _KAFKA_BINDING}},
    }


def _hoist(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    """Move the schema's `$defs` into the document's components.

    In AsyncAPI a `#/...` reference resolves against the whole document, so a
    JSON Schema's own `#/$defs/X` would point nowhere once embedded.
    """
    schema = _rewrite_refs(copy.deepcopy(schema))
    for name, definition in schema.pop("$defs", {}).items():
        if name in into and into[name] != definition:
            raise ValueError(f"two different schemas are both named {name}")
        into[name] = definition
    # The document's schemas are AsyncAPI Schema Objects (a JSON Schema
    # draft-07 superset): the 2020-12 dialect marker does not belong here.
    schema.pop("$schema", None)
    return schema


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: (_SCHEMAS + value.removeprefix("#/$defs/")
                      if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
                      else _rewrite_refs(value))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def _camel(topic: str) -> str:
    first, *rest = topic.split(".")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def render(document: dict[str, Any]) -> str:
    # Insertion order (not sorted keys) keeps `asyncapi` and `info` on top, as
    # people expect to read them; the build is deterministic, so is the text.
    header = "# Generated by `python -m schemas.asyncapi` from schemas/contract.py; do not edit.\n"
    return header + str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100))


def is_stale(path: Path = DEFAULT_PATH) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != render(build_document())


def write_document(path: Path = DEFAULT_PATH) -> bool:
    """Write the document when it changed; True when the file was rewritten."""
    text = render(build_document())
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def main() -> None:
    changed = write_document(DEFAULT_PATH)
    sys.stdout.write(f"{DEFAULT_PATH} {'rewritten' if changed else 'up to date'}\n")


if __name__ == "__main__":
    main()
