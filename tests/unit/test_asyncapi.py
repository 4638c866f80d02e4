"""The checked-in AsyncAPI document must match the models and be a well-formed
AsyncAPI 3.0 document (the structural rules of the 3.0.0 specification)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Message

from messaging.topics import CONSUMED
from messaging.worker import dead_letter
from schemas.asyncapi import (
    DEAD_LETTER_HEADERS,
    DEFAULT_PATH,
    build_document,
    is_stale,
    render,
    write_document,
)
from schemas.contract import EVENT_MODELS, TOPIC_EVENT_TYPES, dlq_topic
from schemas.export import event_schema

_COMPONENT_KEY = r"^[a-zA-Z0-9.\-_]+$"


class Unresolved(LookupError):
    pass


def resolve(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise Unresolved(f"only local references are used, got {ref}")
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise Unresolved(f"{ref} does not resolve")
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs(item)]
    return []


def deref(document: dict[str, Any], node: Any) -> Any:
    """`node` with every reference replaced by its target (the schemas have no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return deref(document, resolve(document, node["$ref"]))
        return {key: deref(document, value) for key, value in node.items()}
    if isinstance(node, list):
        return [deref(document, item) for item in node]
    return node


def structural_errors(doc: dict[str, Any]) -> list[str]:
    """The required fields and reference rules of AsyncAPI 3.0.0."""
    errors: list[str] = []
    if doc.get("asyncapi") != "3.0.0":
        errors.append("asyncapi must be '3.0.0'")
    info = doc.get("info", {})
    for key in ("title", "version"):
        if not isinstance(info.get(key), str) or not info[key]:
            errors.append(f"info.{key} is required")
    for name, server in doc.get("servers", {}).items():
        if not server.get("host") or not server.get("protocol"):
            errors.append(f"server {name} needs host and protocol")
    channels = doc.get("channels", {})
    if not channels:
        errors.append("no channels")
    for cid, channel in channels.items():
        if not isinstance(channel.get("address"), str):
            errors.append(f"channel {cid} has no address")
        if not channel.get("messages"):
            errors.append(f"channel {cid} has no messages")
        for mid, message in channel.get("messages", {}).items():
            try:
                target = resolve(doc, message["$ref"]) if "$ref" in message else message
            except Unresolved:
                continue  # reported below with every other reference
            if "payload" not in target:
                errors.append(f"message {cid}/{mid} has no payload")
    for oid, op in doc.get("operations", {}).items():
        if op.get("action") not in ("send", "receive"):
            errors.append(f"operation {oid}: action must be send or receive")
        channel_ref = op.get("channel", {}).get("$ref", "")
        if not channel_ref.startswith("#/channels/"):
            errors.append(f"operation {oid} must reference a channel")
            continue
        # 3.0: an operation's messages are a subset of its channel's messages.
        for message in op.get("messages", []):
            if not message.get("$ref", "").startswith(channel_ref + "/messages/"):
                errors.append(f"operation {oid}: message {message} is not in its channel")
    for section in ("schemas", "messages", "correlationIds"):
        for key in doc.get("components", {}).get(section, {}):
            if not re.match(_COMPONENT_KEY, key):
                errors.append(f"components.{section} key {key!r} is not allowed")
    for ref in refs(doc):
        try:
            resolve(doc, ref)
        except Unresolved as exc:
            errors.append(str(exc))
    return errors


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_checked_in_document_is_current() -> None:
    assert not is_stale(DEFAULT_PATH), (
        f"{DEFAULT_PATH} is out of date; run `python -m schemas.asyncapi` and commit the result"
    )


def test_stale_document_is_detected_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.yaml"
    assert is_stale(path)
    assert write_document(path) is True
    assert not is_stale(path) and write_document(path) is False
    path.write_text(path.read_text().replace("CheckoutFailed", "CheckoutFailled"))
    assert is_stale(path)


def test_rendering_is_deterministic() -> None:
    assert render(build_document("9.9.9")) == render(build_document("9.9.9"))


def test_document_is_structurally_valid_asyncapi_3(document: dict[str, Any]) -> None:
    assert structural_errors(document) == []


def test_the_structural_check_can_fail(document: dict[str, Any]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(document))
    broken["asyncapi"] = "2.6.0"
    del broken["info"]["version"]
    del broken["channels"]["checkoutResults"]["address"]
    broken["operations"]["sendCheckoutResults"]["action"] = "publish"
    broken["operations"]["receiveCheckoutRequested"]["messages"] = [
        {"$ref": "#/channels/checkoutResults/messages/CheckoutFailed"}]
    broken["channels"]["ordersEvents"]["messages"]["Nope"] = {"$ref": "#/components/messages/Nope"}
    errors = structural_errors(broken)
    assert len(errors) == 6, errors


def test_every_external_topic_is_a_channel_with_its_event_types(document: dict[str, Any]) -> None:
    by_address = {c["address"]: c for c in document["channels"].values()}
    for topic, types in TOPIC_EVENT_TYPES.items():
        assert set(by_address[topic]["messages"]) == set(types), topic
    messages = document["components"]["messages"]
    assert set(EVENT_MODELS) <= set(messages)


def test_operations_match_what_the_workers_consume(document: dict[str, Any]) -> None:
    actions: dict[str, set[str]] = {}
    for op in document["operations"].values():
        address = resolve(document, op["channel"]["$ref"])["address"]
        actions.setdefault(address, set()).add(op["action"])
    for topic in TOPIC_EVENT_TYPES:
        expected = "receive" if topic in CONSUMED else "send"
        assert actions[topic] == {expected}, topic
        if topic in CONSUMED:
            assert actions[dlq_topic(topic)] == {"send"}


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_payload_is_the_whole_cloud_event_with_typed_data(
    document: dict[str, Any], event_type: str
) -> None:
    message = document["components"]["messages"][event_type]
    payload = deref(document, message["payload"])
    expected = event_schema(event_type, EVENT_MODELS[event_type])
    expected.pop("$schema")
    assert payload == deref(expected, {k: v for k, v in expected.items() if k != "$defs"})
    assert payload["properties"]["type"]["const"] == event_type
    assert message["bindings"]["kafka"]["key"]["type"] == "string"


def test_dead_letter_headers_are_the_ones_the_worker_writes() -> None:
    msg = Message(topic="checkout.requested", partition=0, offset=7, key=b"cs_1", value=b"x")
    assert set(dead_letter(msg, ValueError("bad")).headers) == set(DEAD_LETTER_HEADERS)
