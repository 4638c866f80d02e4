"""Every limit of `schemas.limits`, checked where a message enters: valid at the
bound, refused one past it with a sentence a person can read, U+0000 refused
in every text field, the int64 subtotal, the 1 MB value and the header limits."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import limits
from schemas.contract import (
    CHECKOUT_REQUESTED,
    FULFILLMENT_EVENTS,
    NO_NUL_REGEX,
    NON_BLANK_NO_NUL_REGEX,
    ORDERS_REQUESTS,
    TOPIC_EVENT_TYPES,
    CheckoutRequested,
    LineItem,
)
from schemas.envelope import CloudEvent, InvalidEvent, parse_event
from schemas.internal import COMMANDS, CommandReply
from schemas.limits import MAX_AMOUNT, MAX_EVENT_BYTES, header_problem

REQUESTED = TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED]
SESSION = "cs_8f14e45f"


def request(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "checkout_session_id": SESSION,
        "customer_id": "cust_42",
        "currency": "USD",
        "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": 1999}],
        "promo_code": "BF10",
        "payment": {"method": "card", "token": "tok_visa"},
        "shipping_address": {"name": "A. Buyer", "line1": "1 Main St", "line2": "Flat 2",
                             "city": "Springfield", "state": "IL", "postal_code": "12345",
                             "country": "US"},
    }
    data.update(changes)
    return data


def event(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {"specversion": "1.0", "id": "evt-1", "source": "/cart", "type": "CheckoutRequested",
            "time": "2024-01-31T12:00:00Z", "subject": data.get("checkout_session_id", SESSION),
            "datacontenttype": "application/json", "data": data}
    body.update(changes)
    return body


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def refused(body: bytes, expected: dict[str, type[BaseModel]] = REQUESTED) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(body, expected)
    reason = info.value.reason
    # It becomes CheckoutFailed.detail and a DLQ header: printable, bounded.
    assert limits.NUL not in reason and len(reason) < 2000, reason
    return info.value


def location(path: str) -> str:
    """How a reason names ``path``: ``items.0.sku`` is ``data.items[0].sku``."""
    return "data." + re.sub(r"\.(\d+)", r"[\1]", path)


def put(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (``a.b`` or ``items.0.sku``)."""
    out = copy.deepcopy(data)
    node: Any = out
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return out


# --- text in CheckoutRequested ----------------------------------------------

# Every free-text field of a request, with its limit. Checkout session id,
# currency and country are patterns and tested apart.
REQUEST_TEXT = [
    ("customer_id", limits.MAX_ID_CHARS),
    ("items.0.sku", limits.MAX_SKU_CHARS),
    ("promo_code", limits.MAX_PROMO_CODE_CHARS),
    ("payment.method", limits.MAX_PAYMENT_METHOD_CHARS),
    ("payment.token", limits.MAX_PAYMENT_TOKEN_CHARS),
    ("shipping_address.name", limits.MAX_NAME_CHARS),
    ("shipping_address.line1", limits.MAX_ADDRESS_LINE_CHARS),
    ("shipping_address.line2", limits.MAX_ADDRESS_LINE_CHARS),
    ("shipping_address.city", limits.MAX_CITY_CHARS),
    ("shipping_address.state", limits.MAX_REGION_CHARS),
    ("shipping_address.postal_code", limits.MAX_POSTAL_CODE_CHARS),
]
ALL_REQUEST_STRINGS = [path for path, _ in REQUEST_TEXT] + [
    "checkout_session_id", "currency", "shipping_address.country"]


def test_limits_are_the_documented_ones() -> None:
    # The README's "Limits" table says these; change both together.
    assert (limits.MAX_EVENT_BYTES, limits.MAX_HEADERS, limits.MAX_HEADER_NAME_BYTES,
            limits.MAX_HEADER_VALUE_BYTES, limits.MAX_HEADERS_BYTES) == (
        1_000_000, 32, 256, 8_192, 16_384)
    assert dict(REQUEST_TEXT) == {
        "customer_id": 128, "items.0.sku": 64, "promo_code": 64, "payment.method": 64,
        "payment.token": 1024, "shipping_address.name": 256, "shipping_address.line1": 256,
        "shipping_address.line2": 256, "shipping_address.city": 128,
        "shipping_address.state": 128, "shipping_address.postal_code": 32,
    }  # fmt: skip
    assert (limits.MAX_SESSION_ID_CHARS, limits.MAX_ITEMS, limits.MAX_QUANTITY) == (128, 100, 1000)
    assert MAX_AMOUNT == 9_223_372_036_854_775_807


@pytest.mark.parametrize(("path", "limit"), REQUEST_TEXT)
def test_request_text_is_accepted_at_its_limit(path: str, limit: int) -> None:
    _, data = parse_event(encoded(event(put(request(), path, "x" * limit))), REQUESTED)
    assert isinstance(data, CheckoutRequested)


@pytest.mark.parametrize(("path", "limit"), REQUEST_TEXT)
def test_request_text_one_past_its_limit_is_refused_naming_field_and_limit(
    path: str, limit: int
) -> None:
    error = refused(encoded(event(put(request(), path, "x" * (limit + 1)))))
    assert f"{location(path)}: must be at most {limit} characters long" in error.reason
    assert error.session_id == SESSION  # so the cart gets CheckoutFailed INVALID_REQUEST


@pytest.mark.parametrize("path", ALL_REQUEST_STRINGS)
@pytest.mark.parametrize("where", ["alone", "inside", "at the end"])
def test_nul_in_any_request_text_is_refused(path: str, where: str) -> None:
    value = {"alone": "\x00", "inside": "ab\x00cd", "at the end": "US\x00"}[where]
    body = event(put(request(), path, value))
    if path == "checkout_session_id":
        body["subject"] = SESSION  # so the session can still be read from the subject
    error = refused(encoded(body))
    assert location(path) in error.reason
    assert error.session_id == SESSION


def test_nul_as_json_escape_gives_a_readable_sentence() -> None:
    body = encoded(event(request())).replace(b'"cust_42"', b'"cust\\u000042"')
    error = refused(body)
    assert error.reason == (
        "invalid CheckoutRequested data: data.customer_id: must not contain the character "
        "U+0000 (NUL)"
    )
    assert error.session_id == SESSION


@pytest.mark.parametrize("path", ["items.0.sku", "payment.token", "shipping_address.city"])
def test_blank_still_refused_where_it_was(path: str) -> None:
    assert "must not be blank" in refused(encoded(event(put(request(), path, "  ")))).reason


# --- the envelope -------------------------------------------------------------


ENVELOPE_TEXT = [
    ("id", limits.MAX_EVENT_ID_CHARS),
    ("source", limits.MAX_EVENT_SOURCE_CHARS),
    ("type", limits.MAX_EVENT_TYPE_CHARS),
    ("subject", limits.MAX_EVENT_SUBJECT_CHARS),
]


@pytest.mark.parametrize(("field", "limit"), ENVELOPE_TEXT)
def test_envelope_text_at_its_limit_passes_the_envelope(field: str, limit: int) -> None:
    assert CloudEvent.model_validate(event(request(), **{field: "x" * limit}))


@pytest.mark.parametrize(("field", "limit"), ENVELOPE_TEXT)
def test_envelope_text_one_past_its_limit_is_refused(field: str, limit: int) -> None:
    error = refused(encoded(event(request(), **{field: "x" * (limit + 1)})))
    assert f"{field}: must be at most {limit} characters long" in error.reason
    assert error.session_id == SESSION


@pytest.mark.parametrize("field", ["id", "source", "type", "subject"])
def test_nul_in_envelope_text_is_refused(field: str) -> None:
    error = refused(encoded(event(request(), **{field: "e\x00"})))
    assert f"{field}: must not contain the character U+0000 (NUL)" in error.reason
    assert error.session_id == SESSION


def test_extension_attribute_text_is_limited() -> None:
    at_limit = "x" * limits.MAX_EXTENSION_CHARS
    assert parse_event(encoded(event(request(), tracestate=at_limit)), REQUESTED)
    too_long = refused(encoded(event(request(), tracestate=at_limit + "x")))
    assert "'tracestate' is 1025 characters long" in too_long.reason
    assert "U+0000" in refused(encoded(event(request(), traceparent="00-\x00"))).reason


def test_unknown_keys_from_the_input_are_quoted_and_cut_in_the_reason() -> None:
    error = refused(encoded(event({**request(), "\x00" * 5000: 1})))
    assert "is not a known field" in error.reason and "\\x00" in error.reason
    assert len(error.reason) < 400  # 64 characters quoted, however long the key
    long_name = refused(encoded(event(request(), **{"Z" * 5000: "v"})))
    assert "cut, 5000 characters" in long_name.reason


# --- order events we consume ------------------------------------------------

ORDER_TEXT = [
    (ORDERS_REQUESTS, "CancelOrderRequested", "reason", limits.MAX_REASON_CHARS),
    (ORDERS_REQUESTS, "ReturnRequested", "reason", limits.MAX_REASON_CHARS),
    (FULFILLMENT_EVENTS, "OrderShipped", "carrier", limits.MAX_CARRIER_CHARS),
    (FULFILLMENT_EVENTS, "OrderShipped", "tracking_number", limits.MAX_TRACKING_NUMBER_CHARS),
    (FULFILLMENT_EVENTS, "OrderDelivered", "order_id", limits.MAX_ID_CHARS),
    (FULFILLMENT_EVENTS, "ReturnReceived", "order_id", limits.MAX_ID_CHARS),
    (ORDERS_REQUESTS, "CancelOrderRequested", "order_id", limits.MAX_ID_CHARS),
]


def order_event(type_: str, **data: Any) -> bytes:
    payload = {"order_id": "ord_1", "checkout_session_id": SESSION, **data}
    return encoded(event(payload, type=type_, source="/warehouse"))


@pytest.mark.parametrize(("topic", "type_", "field", "limit"), ORDER_TEXT)
def test_order_event_text_limits(topic: str, type_: str, field: str, limit: int) -> None:
    expected = TOPIC_EVENT_TYPES[topic]
    assert parse_event(order_event(type_, **{field: "x" * limit}), expected)
    error = refused(order_event(type_, **{field: "x" * (limit + 1)}), expected)
    assert f"data.{field}: must be at most {limit} characters long" in error.reason
    error = refused(order_event(type_, **{field: "ok\x00"}), expected)
    assert f"data.{field}: must not contain the character U+0000" in error.reason
    assert error.session_id == SESSION


# --- money: every amount and the subtotal fit a signed 64-bit integer ---------


def line(sku: str, quantity: int, unit_price: int) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def test_unit_price_at_int64_max_is_accepted_and_one_past_is_refused() -> None:
    assert LineItem(sku="S", quantity=1, unit_price=MAX_AMOUNT)
    error = refused(encoded(event(request(items=[line("S", 1, MAX_AMOUNT + 1)]))))
    assert f"data.items[0].unit_price: must be at most {MAX_AMOUNT}" in error.reason
    assert error.session_id == SESSION


def test_subtotal_exactly_int64_max_is_accepted() -> None:
    half = MAX_AMOUNT // 2
    items = [line("A", 1, half), line("B", 1, MAX_AMOUNT - half)]
    assert CheckoutRequested.model_validate(request(items=items))


def test_subtotal_one_past_int64_max_is_refused_with_the_sum() -> None:
    items = [line("A", 1, MAX_AMOUNT), line("B", 1, 1)]
    error = refused(encoded(event(request(items=items))))
    assert error.reason == (
        "invalid CheckoutRequested data: data.items: the cart's subtotal (the sum of quantity "
        f"x unit_price) is {MAX_AMOUNT + 1}, more than the largest amount allowed, {MAX_AMOUNT}"
    )
    assert error.session_id == SESSION


def test_the_issue_cart_is_refused_at_intake() -> None:
    # unit_price 10^20 with a promo code: once a bigint overflow deep in the saga.
    error = refused(encoded(event(request(items=[line("SKU-1", 3, 10**20)]))))
    assert "unit_price: must be at most" in error.reason and error.session_id == SESSION


def test_a_price_that_fits_can_still_make_a_subtotal_that_does_not() -> None:
    price = MAX_AMOUNT // 1000 + 1
    assert LineItem(sku="S", quantity=1000, unit_price=price)
    assert "subtotal" in refused(encoded(event(request(items=[line("S", 1000, price)])))).reason


carts = st.lists(
    st.tuples(st.integers(1, limits.MAX_QUANTITY),
              st.one_of(st.integers(0, MAX_AMOUNT), st.integers(0, 10**6),
                        st.just(MAX_AMOUNT // 1000))),
    min_size=1, max_size=limits.MAX_ITEMS,
)


@given(carts)
def test_any_cart_is_accepted_exactly_when_its_subtotal_fits(cart: list[tuple[int, int]]) -> None:
    items = [line(f"SKU-{i}", q, p) for i, (q, p) in enumerate(cart)]
    fits = sum(q * p for q, p in cart) <= MAX_AMOUNT
    try:
        CheckoutRequested.model_validate(request(items=items))
    except ValidationError as exc:
        assert not fits and "subtotal" in str(exc)
    else:
        assert fits


# --- the whole value ------------------------------------------------------------


def padded(size: int) -> bytes:
    body = encoded(event(request()))
    return body + b" " * (size - len(body))  # JSON allows trailing whitespace


def test_value_of_exactly_the_limit_is_parsed() -> None:
    raw = padded(MAX_EVENT_BYTES)
    assert len(raw) == MAX_EVENT_BYTES
    assert parse_event(raw, REQUESTED)[1].checkout_session_id == SESSION  # type: ignore[attr-defined]


def test_value_one_byte_over_the_limit_is_refused_before_decoding() -> None:
    error = refused(padded(MAX_EVENT_BYTES + 1))
    assert error.reason == (
        "the event is 1,000,001 bytes long, more than the limit of 1,000,000 bytes (1 MB)"
    )
    assert error.session_id is None
    # Not decoded at all: invalid UTF-8 and JSON past the limit say only the size.
    assert "bytes long" in refused(b"\xff" * (MAX_EVENT_BYTES + 1)).reason


# --- headers --------------------------------------------------------------------


def test_no_headers_or_few_small_ones_are_fine() -> None:
    assert header_problem(None) is None
    assert header_problem([]) is None
    assert header_problem([("traceparent", b"00-" + b"a" * 52), ("empty", None)]) is None
    assert header_problem({"traceparent": "00-abc"}) is None


def test_header_count_limit() -> None:
    assert header_problem([(f"h{i}", b"v") for i in range(limits.MAX_HEADERS)]) is None
    problem = header_problem([(f"h{i}", b"v") for i in range(limits.MAX_HEADERS + 1)])
    assert problem == "the message has 33 headers, more than the limit of 32"


def test_header_name_limit_counts_bytes() -> None:
    assert header_problem([("n" * limits.MAX_HEADER_NAME_BYTES, b"")]) is None
    assert "header name is 257 bytes" in str(header_problem([("n" * 257, b"")]))
    assert "header name is 258 bytes" in str(header_problem([("é" * 129, b"")]))


def test_header_value_limit_counts_bytes() -> None:
    assert header_problem([("big", b"v" * limits.MAX_HEADER_VALUE_BYTES)]) is None
    problem = header_problem([("big", b"v" * (limits.MAX_HEADER_VALUE_BYTES + 1))])
    assert problem == "the header 'big' is 8193 bytes long, more than the limit of 8192 bytes"
    assert header_problem({"big": "é" * 4097}) is not None  # 8194 bytes of UTF-8


def test_headers_total_limit() -> None:
    # Two values of 8,192 bytes and two one-byte names: 16,386 bytes in all.
    value = b"v" * limits.MAX_HEADER_VALUE_BYTES
    assert header_problem([("a", value), ("b", value[:-2])]) is None  # exactly 16,384
    problem = header_problem([("a", value), ("b", value)])
    assert problem == (
        "the message's headers come to 16386 bytes, more than the limit of 16384 bytes"
    )


# --- internal commands and the reply ------------------------------------------

ITEMS = [{"sku": "SKU-1", "quantity": 1, "unit_price": 100}]
ADDRESS = {"name": "A", "line1": "1 St", "city": "C", "postal_code": "1", "country": "US"}
COMMAND_EXAMPLES: dict[str, dict[str, Any]] = {
    "ReserveStock": {"items": ITEMS, "hold_ttl_seconds": 900.0},
    "ReleaseStock": {"reason": "compensation"},
    "CommitStock": {"items": ITEMS},
    "CreateOrder": {"order_id": "ord_1", "customer_id": "c", "items": ITEMS, "subtotal": 100,
                    "discount": 0, "total": 100, "currency": "USD", "shipping_address": ADDRESS},
    "CancelOrder": {"payment_failed": False, "reason": "OUT_OF_STOCK"},
    "ConfirmOrder": {},
    "AuthorizePayment": {"amount": 100, "currency": "USD", "method": "card", "token": "tok"},
    "VoidPayment": {},
    "CapturePayment": {},
    "ApplyPromo": {"promo_code": "BF10", "items": ITEMS},
    "ReleasePromo": {"promo_code": "BF10", "reason": "compensation"},
    "RestockOrder": {"order_id": "ord_1", "items": ITEMS, "reason": "returned"},
    "RefundPayment": {"order_id": "ord_1", "reason": "returned"},
}
REPLY = {"checkout_session_id": "cs_1", "command": "ApplyPromo", "ok": False,
         "reason": "PROMO_INVALID", "detail": "No such code.", "skus": ["SKU-1"]}


def internal_examples() -> Iterator[tuple[type[BaseModel], dict[str, Any]]]:
    for name, fields in COMMAND_EXAMPLES.items():
        yield COMMANDS[name], {"checkout_session_id": "cs_1", "attempt": 1, **fields}
    yield CommandReply, REPLY


def string_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, str):
        yield prefix
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from string_paths(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from string_paths(value, f"{prefix}.{i}")


def test_every_command_has_an_example() -> None:
    assert set(COMMAND_EXAMPLES) == set(COMMANDS)


INTERNAL_STRINGS = [
    (model, example, path)
    for model, example in internal_examples()
    for path in string_paths(example)
    if path != "reason" or model is not CommandReply  # an enum: no free text
]


@pytest.mark.parametrize(
    ("model", "example", "path"), INTERNAL_STRINGS,
    ids=[f"{m.__name__}.{p}" for m, _, p in INTERNAL_STRINGS],
)
def test_nul_in_any_internal_text_is_refused(
    model: type[BaseModel], example: dict[str, Any], path: str
) -> None:
    assert model.model_validate(example)
    with pytest.raises(ValidationError) as info:
        model.model_validate(put(example, path, "a\x00"))
    assert "U+0000" in str(info.value) or "pattern" in str(info.value)


def test_internal_commands_have_the_contract_limits() -> None:
    big_cart = [line("A", 1, MAX_AMOUNT), line("B", 1, 1)]
    for name in ("ReserveStock", "CommitStock", "ApplyPromo", "RestockOrder", "CreateOrder"):
        example = {"checkout_session_id": "cs_1", **COMMAND_EXAMPLES[name]}
        with pytest.raises(ValidationError, match="subtotal"):
            COMMANDS[name].model_validate({**example, "items": big_cart})
    create = {"checkout_session_id": "cs_1", **COMMAND_EXAMPLES["CreateOrder"]}
    with pytest.raises(ValidationError, match="customer_id"):
        COMMANDS["CreateOrder"].model_validate({**create, "customer_id": "c" * 129})
    authorize = {"checkout_session_id": "cs_1", **COMMAND_EXAMPLES["AuthorizePayment"]}
    assert COMMANDS["AuthorizePayment"].model_validate({**authorize, "amount": MAX_AMOUNT})
    with pytest.raises(ValidationError, match="amount"):
        COMMANDS["AuthorizePayment"].model_validate({**authorize, "amount": MAX_AMOUNT + 1})
    with pytest.raises(ValidationError, match="checkout_session_id"):
        CommandReply.model_validate({**REPLY, "checkout_session_id": "x" * 129})


# --- the models' JSON Schemas carry every bound ---------------------------------


def string_schemas(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, schema) of every string and integer in a model's JSON Schema."""
    defs = schema.get("$defs", {})

    def walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            yield from walk(defs[node["$ref"].split("/")[-1]], where)
            return
        if node.get("type") in ("string", "integer"):
            yield where, node
        for key in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(key, []):
                yield from walk(branch, where)
        for name, child in node.get("properties", {}).items():
            yield from walk(child, f"{where}.{name}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{where}[]")

    yield from walk(schema, schema.get("title", "?"))


CONSUMED: list[type[BaseModel]] = [
    *TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED].values(),
    *TOPIC_EVENT_TYPES[ORDERS_REQUESTS].values(),
    *TOPIC_EVENT_TYPES[FULFILLMENT_EVENTS].values(),
    CloudEvent,
    *COMMANDS.values(),
    CommandReply,
]
# Sentences we write ourselves, whose length follows from what they name.
UNBOUNDED_ON_PURPOSE = {"CommandReply.detail"}


@pytest.mark.parametrize("model", CONSUMED, ids=lambda m: m.__name__)
def test_every_consumed_string_and_integer_is_bounded_and_nul_free(
    model: type[BaseModel]
) -> None:
    for where, node in string_schemas(model.model_json_schema(mode="validation")):
        if node.get("type") == "integer":
            if where.endswith(".attempt"):
                continue  # our own retry counter
            assert "maximum" in node, where
            continue
        if "const" in node or "enum" in node or node.get("format") == "date-time":
            continue
        pattern = node.get("pattern")
        assert pattern, where
        assert not re.search(pattern, "\x00") and not re.search(pattern, "AB\x00"), where
        if where not in UNBOUNDED_ON_PURPOSE:
            assert "maxLength" in node or re.search(r"\{\d+(,\d+)?\}\$$", pattern), where


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (NO_NUL_REGEX, ["", " ", "Ünïcødé", "a\nb"], ["\x00", "a\x00", "\x00a"]),
        (NON_BLANK_NO_NUL_REGEX, ["a", " a ", "tok_visa"], ["", " ", "\t\n", "\x00", " \x00 "]),
    ],
)
def test_schema_patterns_mean_what_the_validators_do(
    pattern: str, good: list[str], bad: list[str]
) -> None:
    assert all(re.search(pattern, text) for text in good)
    assert not any(re.search(pattern, text) for text in bad)


# --- whatever text arrives, the answer is a bounded, storable sentence ----------

odd_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from(["\x00", "x", " ", "é", "\n", "'"]), max_size=40),
    st.integers(0, 2000).map(lambda n: "y" * n),
)


@given(st.sampled_from(ALL_REQUEST_STRINGS + ["id", "source", "type", "subject", "tracestate",
                                              "unknown_key"]), odd_text)
def test_any_text_anywhere_is_accepted_within_limits_or_refused_readably(
    where: str, text: str
) -> None:
    body = event(request())
    if where in ("id", "source", "type", "subject", "tracestate"):
        body[where] = text
    elif where == "unknown_key":
        body["data"][text] = 1
    else:
        body["data"] = put(request(), where, text)
    try:
        _, data = parse_event(encoded(body), REQUESTED)
    except InvalidEvent as error:
        assert limits.NUL not in error.reason and len(error.reason) < 2000, error.reason
        return
    # Accepted: nothing in it that PostgreSQL would refuse.
    assert limits.NUL not in data.model_dump_json()


def test_readme_lists_every_limit() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Limits", 1)[1].split("\n## ", 1)[0]
    for figure in ["1,000,000 bytes", "at most 32", "256 bytes", "8,192 bytes", "16,384 bytes",
                   "1-256 / 1-1,024 / 1-128 / 1-256", "at most 1,024", "1-128 characters of",
                   "1-64 characters", "1-64 / 1-1,024", "256 / 128 / 32", "1-100 lines",
                   "1-1,000", "9,223,372,036,854,775,807", "1,000 / 128", "U+0000",
                   "INVALID_REQUEST", "checkout.requested.dlq"]:
        assert figure in section, figure
    assert f"{limits.MAX_AMOUNT:,}" in section and f"{MAX_EVENT_BYTES:,}" in section


def test_a_huge_attribute_name_is_cut_in_the_reason() -> None:
    error = refused(encoded(event(request(), **{"a" * 100_000: {"nested": 1}})))
    assert "cut, 100000 characters" in error.reason and len(error.reason) < 400
