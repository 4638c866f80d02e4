"""The external contract: limits at their bounds, the codec's failure modes,
and interoperability with the official CloudEvents SDK."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from cloudevents.v1.conversion import to_structured as sdk_v1_to_structured
from cloudevents.v1.http import CloudEvent as SdkHttpEvent
from cloudevents.v1.http import from_json as sdk_v1_from_json
from pydantic import BaseModel, ValidationError

from schemas.contract import (
    CHECKOUT_REQUESTED,
    CHECKOUT_RESULTS,
    EVENT_MODELS,
    FULFILLMENT_EVENTS,
    ORDERS_CONFIRMED,
    ORDERS_EVENTS,
    ORDERS_REQUESTS,
    SESSION_ID_PATTERN,
    TOPIC_EVENT_TYPES,
    CheckoutFailed,
    CheckoutRequested,
    CheckoutSucceeded,
    FailureReason,
    LineItem,
    OrderConfirmed,
    OrderDelivered,
    OrderShipped,
    OrderStatusChanged,
    dlq_topic,
)
from schemas.envelope import CloudEvent, InvalidEvent, encode_event, make_event, parse_event

# Verbatim from the contract.
EXAMPLE_REQUEST: dict[str, Any] = {
    "checkout_session_id": "cs_8f14e45f",
    "customer_id": "cust_42",
    "currency": "USD",
    "items": [{"sku": "SKU-1", "quantity": 2, "unit_price": 1999}],
    "promo_code": "BF10",
    "payment": {"method": "card", "token": "tok_visa"},
    "shipping_address": {
        "name": "A. Buyer",
        "line1": "1 Main St",
        "city": "Springfield",
        "postal_code": "12345",
        "country": "US",
    },
}
REQUESTED = TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED]


def request(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_REQUEST)
    data.update(changes)
    return data


def items(count: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU-{i}", "quantity": 1, "unit_price": 100} for i in range(count)]


_EXAMPLE: Any = object()  # `None` is itself a bad value some tests send as data


def envelope(data: Any = _EXAMPLE, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/cart",
        "type": "CheckoutRequested",
        "time": "2024-01-31T12:00:00Z",
        "subject": "cs_8f14e45f",
        "datacontenttype": "application/json",
        "data": request() if data is _EXAMPLE else data,
    }
    event.update(changes)
    return event


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def rejected(model: type[BaseModel], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


# --- the contract's example -----------------------------------------------


def test_contract_example_parses() -> None:
    req = CheckoutRequested.model_validate(EXAMPLE_REQUEST)
    assert req.items == [LineItem(sku="SKU-1", quantity=2, unit_price=1999)]
    assert req.shipping_address is not None and req.shipping_address.country == "US"


def test_contract_example_parses_inside_an_envelope() -> None:
    event, data = parse_event(raw(envelope()), REQUESTED)
    assert event.type == "CheckoutRequested"
    assert data == CheckoutRequested.model_validate(EXAMPLE_REQUEST)


def test_promo_and_shipping_may_be_absent() -> None:
    data = request()
    del data["promo_code"], data["shipping_address"]
    req = CheckoutRequested.model_validate(data)
    assert req.promo_code is None and req.shipping_address is None


# --- limits ---------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["a", "x" * 128, "A-z_0.9:x"])
def test_session_id_accepted_within_limits(session_id: str) -> None:
    assert CheckoutRequested.model_validate(request(checkout_session_id=session_id))
    assert SESSION_ID_PATTERN.match(session_id)


@pytest.mark.parametrize(
    "session_id", ["", "x" * 129, "cs 1", "cs/1", "cs_1\n", "cś_1", "cs;1"]
)
def test_session_id_rejected_outside_limits(session_id: str) -> None:
    assert "checkout_session_id" in rejected(
        CheckoutRequested, request(checkout_session_id=session_id)
    )
    assert not SESSION_ID_PATTERN.match(session_id)


@pytest.mark.parametrize("count", [1, 100])
def test_item_count_accepted_at_bounds(count: int) -> None:
    assert len(CheckoutRequested.model_validate(request(items=items(count))).items) == count


@pytest.mark.parametrize("count", [0, 101])
def test_item_count_rejected_past_bounds(count: int) -> None:
    assert "items" in rejected(CheckoutRequested, request(items=items(count)))


@pytest.mark.parametrize("quantity", [1, 1000])
def test_quantity_accepted_at_bounds(quantity: int) -> None:
    assert LineItem(sku="S", quantity=quantity, unit_price=0).quantity == quantity


@pytest.mark.parametrize("quantity", [0, 1001, -1, 1.0, True, "2"])
def test_quantity_rejected_past_bounds_or_not_an_int(quantity: Any) -> None:
    assert "quantity" in rejected(LineItem, {"sku": "S", "quantity": quantity, "unit_price": 1})


@pytest.mark.parametrize("price", [19.99, 1999.0, "1999", True, -1, None])
def test_price_must_be_a_nonnegative_integer(price: Any) -> None:
    assert "unit_price" in rejected(LineItem, {"sku": "S", "quantity": 1, "unit_price": price})


def test_float_price_rejected_from_json_bytes_too() -> None:
    body = envelope(request(items=[{"sku": "S", "quantity": 1, "unit_price": 19.99}]))
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw(body), REQUESTED)
    assert "data.items[0].unit_price" in info.value.reason


def test_duplicate_sku_rejected_naming_the_sku() -> None:
    dup = [{"sku": "SKU-7", "quantity": 1, "unit_price": 1}] * 2
    message = rejected(CheckoutRequested, request(items=dup))
    assert "SKU-7" in message and "more than once" in message


@pytest.mark.parametrize("sku", ["", " ", "\t", "x" * 65])
def test_bad_sku_rejected(sku: str) -> None:
    assert "sku" in rejected(LineItem, {"sku": sku, "quantity": 1, "unit_price": 1})


def test_sku_of_64_chars_accepted() -> None:
    assert LineItem(sku="x" * 64, quantity=1, unit_price=1)


@pytest.mark.parametrize("currency", ["usd", "US", "USDD", "", "U5D"])
def test_bad_currency_rejected(currency: str) -> None:
    assert "currency" in rejected(CheckoutRequested, request(currency=currency))


@pytest.mark.parametrize("customer_id", ["", "c" * 129])
def test_bad_customer_id_rejected(customer_id: str) -> None:
    assert "customer_id" in rejected(CheckoutRequested, request(customer_id=customer_id))


@pytest.mark.parametrize("promo", ["", "P" * 65])
def test_bad_promo_code_rejected(promo: str) -> None:
    assert "promo_code" in rejected(CheckoutRequested, request(promo_code=promo))


@pytest.mark.parametrize("payment", [{"method": "card"}, {"method": "", "token": "t"}, {}])
def test_bad_payment_rejected(payment: dict[str, str]) -> None:
    assert "payment" in rejected(CheckoutRequested, request(payment=payment))


def test_bad_country_rejected() -> None:
    address = dict(EXAMPLE_REQUEST["shipping_address"], country="USA")
    assert "country" in rejected(CheckoutRequested, request(shipping_address=address))


def test_unknown_field_rejected() -> None:
    assert "coupon" in rejected(CheckoutRequested, request(coupon="X"))


def test_models_are_frozen() -> None:
    req = CheckoutRequested.model_validate(EXAMPLE_REQUEST)
    with pytest.raises(ValidationError):
        req.currency = "EUR"


def test_failure_reasons_are_exactly_the_contract_list() -> None:
    assert {r.value for r in FailureReason} == {
        "INVALID_REQUEST", "UNKNOWN_SKU", "PRICE_CHANGED", "OUT_OF_STOCK", "PROMO_INVALID",
        "PROMO_EXHAUSTED", "PAYMENT_DECLINED", "PAYMENT_TIMEOUT", "CANCELLED",
    }  # fmt: skip
    failed = CheckoutFailed.model_validate(
        {"checkout_session_id": "cs_1", "reason": "OUT_OF_STOCK", "detail": "Gone.", "skus": ["A"]}
    )
    assert failed.reason is FailureReason.OUT_OF_STOCK
    assert "reason" in rejected(
        CheckoutFailed, {"checkout_session_id": "cs_1", "reason": "NOPE", "detail": "x"}
    )


def test_order_confirmed_needs_an_aware_time() -> None:
    data = {
        "order_id": "ord_1", "checkout_session_id": "cs_1", "customer_id": "c",
        "items": items(1), "subtotal": 100, "discount": 0, "total": 100,
        "currency": "USD", "confirmed_at": "2024-01-31T12:00:00",
    }  # fmt: skip
    assert "confirmed_at" in rejected(OrderConfirmed, data)
    confirmed = OrderConfirmed.model_validate(dict(data, confirmed_at="2024-01-31T12:00:00Z"))
    assert confirmed.shipping_address is None


def test_order_status_changed_speaks_from_on_the_wire() -> None:
    by_name = OrderStatusChanged(
        order_id="o", checkout_session_id="cs_1", from_="PLACED", to="SHIPPED"
    )
    by_alias = OrderStatusChanged.model_validate(
        {"order_id": "o", "checkout_session_id": "cs_1", "from": "PLACED", "to": "SHIPPED"}
    )
    assert by_name == by_alias
    assert by_name.model_dump(by_alias=True)["from"] == "PLACED"
    event = make_event(type="OrderStatusChanged", source="/orders", subject="cs_1", data=by_name)
    assert event.data["from"] == "PLACED" and "from_" not in event.data
    assert parse_event(encode_event(event), TOPIC_EVENT_TYPES[ORDERS_EVENTS])[1] == by_name


# --- topics ---------------------------------------------------------------


def test_topic_table_matches_the_contract() -> None:
    assert {topic: sorted(types) for topic, types in TOPIC_EVENT_TYPES.items()} == {
        "checkout.requested": ["CheckoutRequested"],
        "checkout.results": ["CheckoutFailed", "CheckoutSucceeded"],
        "orders.confirmed": ["OrderConfirmed"],
        "orders.requests": ["CancelOrderRequested", "ReturnRequested"],
        "orders.events": sorted([
            "OrderCancelled", "OrderShipped", "OrderDelivered", "ReturnInitiated",
            "OrderReturned", "OrderStatusChanged", "OrderRequestRejected",
        ]),
        "fulfillment.events": ["OrderDelivered", "OrderShipped", "ReturnReceived"],
    }  # fmt: skip
    assert TOPIC_EVENT_TYPES[ORDERS_EVENTS]["OrderShipped"] is OrderShipped
    assert TOPIC_EVENT_TYPES[FULFILLMENT_EVENTS]["OrderShipped"] is OrderShipped
    assert TOPIC_EVENT_TYPES[FULFILLMENT_EVENTS]["OrderDelivered"] is OrderDelivered
    assert len(EVENT_MODELS) == 14
    assert all(name == model.__name__ for name, model in EVENT_MODELS.items())
    assert (CHECKOUT_RESULTS, ORDERS_CONFIRMED, ORDERS_REQUESTS) == (
        "checkout.results", "orders.confirmed", "orders.requests",
    )  # fmt: skip
    assert dlq_topic(CHECKOUT_REQUESTED) == "checkout.requested.dlq"


def test_every_order_event_carries_order_and_session_ids() -> None:
    for topic in (ORDERS_REQUESTS, ORDERS_EVENTS, FULFILLMENT_EVENTS):
        for model in TOPIC_EVENT_TYPES[topic].values():
            assert model.model_fields["order_id"].is_required()
            assert model.model_fields["checkout_session_id"].is_required()


# --- parse_event failures -------------------------------------------------


def invalid(body: bytes, expected: dict[str, type[BaseModel]] = REQUESTED) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(body, expected)
    assert info.value.reason and str(info.value) == info.value.reason
    return info.value


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "not valid JSON"),
        (b"\x00\x01garbage", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"specversion": "1.0", "id": "\xc3\x28"}', "UTF-8"),
        (b"[1, 2]", "array"),
        (b'"text"', "string"),
        (b"null", "null"),
        (b"NaN", "NaN"),
        (b'{"id": "a", "id": "b"}', "twice"),
        (b"[" * 100_000, "nested"),
    ],
)
def test_unreadable_bytes_raise_invalid_event(body: bytes, words: str) -> None:
    error = invalid(body)
    assert words in error.reason
    assert error.session_id is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"specversion": 1.0}, "specversion"),
        ({"id": ""}, "id"),
        ({"source": None}, "source"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2024-01-31T12:00:00"}, "time"),  # no offset
        ({"time": 1706702400}, "time"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
        ({"data": [1]}, "data"),
        ({"data": None}, "data"),
        ({"Trace_Parent": "x"}, "Trace_Parent"),
        ({"traceparent": {"nested": 1}}, "traceparent"),
    ],
)
def test_bad_envelope_raises_with_field_named_and_session_recovered(
    changes: dict[str, Any], field: str
) -> None:
    error = invalid(raw(envelope(**changes)))
    assert field in error.reason
    assert error.session_id == "cs_8f14e45f"


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type", "time", "data"])
def test_missing_required_attribute_is_named(missing: str) -> None:
    event = envelope()
    del event[missing]
    error = invalid(raw(event))
    assert missing in error.reason and "missing" in error.reason


def test_unknown_type_names_it() -> None:
    error = invalid(raw(envelope(type="CheckoutRequestedd")))
    assert "CheckoutRequestedd" in error.reason and "CheckoutRequested" in error.reason
    assert error.session_id == "cs_8f14e45f"


def test_type_from_another_topic_is_unknown_here() -> None:
    body = raw(envelope(type="CheckoutRequested"))
    assert "unexpected event type" in invalid(body, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS]).reason


def test_subject_mismatch_rejected() -> None:
    error = invalid(raw(envelope(subject="cs_other")))
    assert "subject" in error.reason and "cs_other" in error.reason
    assert error.session_id == "cs_8f14e45f"


def test_bad_data_names_the_field_and_recovers_session() -> None:
    error = invalid(raw(envelope(request(items=[]))))
    assert "data.items" in error.reason
    assert error.session_id == "cs_8f14e45f"


def test_session_falls_back_to_subject() -> None:
    error = invalid(raw(envelope({"checkout_session_id": 42}, subject="cs_subject")))
    assert error.session_id == "cs_subject"


@pytest.mark.parametrize("session", ["bad id", "x" * 129, 7, None])
def test_unreadable_session_id_is_none(session: Any) -> None:
    error = invalid(raw(envelope(request(checkout_session_id=session), subject=session)))
    assert error.session_id is None


def test_reason_is_bounded_for_many_errors() -> None:
    error = invalid(raw(envelope({"foo": 1, "bar": 2, "baz": 3, "qux": 4, "quux": 5, "x": 6})))
    assert "more problems" in error.reason


def test_reason_does_not_echo_secrets() -> None:
    payment = {"method": "card", "token": "tok_secret", "x": 1}
    error = invalid(raw(envelope(request(payment=payment))))
    assert "tok_secret" not in error.reason


# --- make / encode / parse ------------------------------------------------


def succeeded() -> CheckoutSucceeded:
    return CheckoutSucceeded(
        checkout_session_id="cs_1", order_id="ord_1", subtotal=3998, discount=400,
        total=3598, currency="USD",
    )  # fmt: skip


def test_encode_parse_round_trip() -> None:
    event = make_event(
        type="CheckoutSucceeded", source="/saga", subject="cs_1", data=succeeded(),
        extensions={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )  # fmt: skip
    body = encode_event(event)
    parsed, data = parse_event(body, TOPIC_EVENT_TYPES[CHECKOUT_RESULTS])
    assert parsed == event and data == succeeded()
    assert parsed.model_extra == event.model_extra and event.model_extra
    assert encode_event(parsed) == body


def test_encoding_is_compact_utc_and_omits_none() -> None:
    cet = timezone(timedelta(hours=1))
    failed = CheckoutFailed(
        checkout_session_id="cs_1", reason=FailureReason.CANCELLED, detail="Bye."
    )
    event = make_event(
        type="CheckoutFailed", source="/saga", subject="cs_1", data=failed, id="e-1",
        time=datetime(2024, 1, 31, 13, 0, tzinfo=cet),
    )  # fmt: skip
    body = encode_event(event)
    assert b": " not in body and b", " not in body
    document = json.loads(body)
    assert document["time"] == "2024-01-31T12:00:00Z"
    assert document["id"] == "e-1" and document["subject"] == "cs_1"
    assert "skus" not in document["data"]
    assert document["data"]["reason"] == "CANCELLED"


def test_make_event_defaults() -> None:
    before = datetime.now(UTC)
    event = make_event(type="CheckoutSucceeded", source="/saga", subject="cs_1", data=succeeded())
    assert event.specversion == "1.0" and event.datacontenttype == "application/json"
    assert len(event.id) == 36 and event.time >= before and event.time.tzinfo is not None
    other = make_event(type="CheckoutSucceeded", source="/saga", subject="cs_1", data=succeeded())
    assert other.id != event.id


def test_make_event_refuses_what_parse_would_reject() -> None:
    with pytest.raises(ValueError, match="subject"):
        make_event(type="CheckoutSucceeded", source="/s", subject="cs_2", data=succeeded())
    with pytest.raises(ValueError, match="CheckoutSucceeded"):
        make_event(type="CheckoutFailed", source="/s", subject="cs_1", data=succeeded())
    with pytest.raises(ValueError, match="core attributes"):
        make_event(type="CheckoutSucceeded", source="/s", subject="cs_1", data=succeeded(),
                   extensions={"id": "x"})  # fmt: skip
    with pytest.raises(ValueError, match="lowercase"):
        make_event(type="CheckoutSucceeded", source="/s", subject="cs_1", data=succeeded(),
                   extensions={"traceParent": "x"})  # fmt: skip
    with pytest.raises(ValueError):
        make_event(type="CheckoutSucceeded", source="/s", subject="cs_1", data=succeeded(),
                   time=datetime(2024, 1, 1))  # fmt: skip


def test_cloud_event_is_frozen() -> None:
    event = make_event(type="CheckoutSucceeded", source="/s", subject="cs_1", data=succeeded())
    with pytest.raises(ValidationError):
        event.id = "other"
    assert isinstance(event, CloudEvent)


# --- interoperability with the CloudEvents SDK ----------------------------


def our_event() -> CloudEvent:
    return make_event(
        type="CheckoutSucceeded", source="/saga", subject="cs_1", data=succeeded(),
        extensions={"traceparent": "00-abc-def-01"},
    )  # fmt: skip


def test_sdk_reads_what_we_encode_from_kafka() -> None:
    ours = our_event()
    message = sdk_kafka.KafkaMessage(headers={}, key=b"cs_1", value=encode_event(ours))
    sdk = sdk_kafka.from_structured(message, JSONFormat())
    assert sdk.get_id() == ours.id and sdk.get_type() == "CheckoutSucceeded"
    assert sdk.get_subject() == "cs_1" and sdk.get_time() == ours.time
    assert sdk.get_extension("traceparent") == "00-abc-def-01"
    assert sdk.get_data() == ours.data


def test_sdk_v1_api_reads_what_we_encode() -> None:
    ours = our_event()
    sdk = sdk_v1_from_json(encode_event(ours))
    assert sdk["id"] == ours.id and sdk["subject"] == "cs_1"
    assert sdk.get_data() == ours.data


def test_we_read_what_the_sdk_writes_to_kafka() -> None:
    sdk = SdkEvent(
        {"type": "OrderShipped", "source": "/warehouse", "subject": "cs_1",
         "datacontenttype": "application/json", "traceparent": "00-abc-def-01"},
        {"order_id": "ord_1", "checkout_session_id": "cs_1", "carrier": "UPS"},
    )  # fmt: skip
    message = sdk_kafka.to_structured_event(sdk)
    event, data = parse_event(message.value, TOPIC_EVENT_TYPES[FULFILLMENT_EVENTS])
    assert event.id == sdk.get_id() and event.time == sdk.get_time()
    assert data == OrderShipped(order_id="ord_1", checkout_session_id="cs_1", carrier="UPS")
    assert event.model_extra == {"traceparent": "00-abc-def-01"}


def test_we_read_what_the_sdk_v1_api_writes() -> None:
    sdk = SdkHttpEvent(
        {"type": "CheckoutRequested", "source": "/cart", "subject": "cs_8f14e45f",
         "datacontenttype": "application/json"},
        EXAMPLE_REQUEST,
    )  # fmt: skip
    _headers, body = sdk_v1_to_structured(sdk)
    event, data = parse_event(body, REQUESTED)
    assert event.id == sdk["id"]
    assert data == CheckoutRequested.model_validate(EXAMPLE_REQUEST)
