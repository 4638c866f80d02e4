"""A storm of hostile input mixed with good checkouts, seen from outside.

1,000 hostile messages of every kind we could think of go to every topic the
project consumes from outside (and a few to its internal topics, as a
misconfigured client would), interleaved with valid checkouts. Then, by the
contract alone:

- every valid checkout succeeds (no hostile neighbour stopped its partition);
- every hostile request whose session id can be read (from the body, or from
  the Kafka key, which the contract says is the session id) gets exactly one
  result, CheckoutFailed INVALID_REQUEST or the business failure its content
  earns, with one CloudEvents id however often it is republished;
- every hostile message that is not a valid event is in its topic's ``.dlq``
  (nothing is lost), the big ones as a bounded copy;
- `verify` passes afterwards.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer
from helpers import Bus, checkout_event, cli, uid

MB = 1_000_000
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    key: str | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    # The session whose result this message must produce (None: no answer is due).
    answers: str | None = None
    # The failure reason the answer must carry (None: any CheckoutFailed).
    reason: str | None = "INVALID_REQUEST"
    # False for a message that is a valid event (no dead letter is due).
    dead_letter: bool = True


def envelope(sid: str, data: Any, **overrides: Any) -> dict[str, Any]:
    doc = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "urn:test:storm",
           "type": "CheckoutRequested", "time": "2026-11-25T10:00:00Z", "subject": sid,
           "datacontenttype": "application/json", "data": data}
    doc.update(overrides)
    return doc


def cart(sid: str, sku: str, **overrides: Any) -> dict[str, Any]:
    data = json.loads(checkout_event(sid, [(sku, 1, 500)]))["data"]
    data.update(overrides)
    return data


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def hostile_requests(sku: str) -> list[Callable[[], Hostile]]:
    """Makers of hostile messages for checkout.requested, one per kind."""
    T = "checkout.requested"

    def keyed(kind: str, value: bytes | None, **kw: Any) -> Callable[[], Hostile]:
        def make() -> Hostile:
            sid = uid("hx")
            v = value.replace(b"@SID@", sid.encode()) if value is not None else None
            return Hostile(kind, T, sid, v, answers=sid, **kw)
        return make

    def body(kind: str, build: Callable[[str], Any], **kw: Any) -> Callable[[], Hostile]:
        def make() -> Hostile:
            sid = uid("hb")
            return Hostile(kind, T, sid, raw(build(sid)), answers=sid, **kw)
        return make

    def unkeyed(kind: str, value: bytes | None) -> Callable[[], Hostile]:
        return lambda: Hostile(kind, T, None, value)

    big_name = "x" * 990_000
    return [
        # Bytes that are not an event at all, under a readable key.
        keyed("empty", b""),
        keyed("tombstone", None),
        keyed("binary", bytes(range(256)) * 4),
        keyed("not-utf8", b"\xff\xfe\xfd{}"),
        keyed("truncated-json", b'{"specversion": "1.0", "id": "@SID@", "data": {'),
        keyed("json-array", b"[1, 2, 3]"),
        keyed("json-string", b'"a checkout"'),
        keyed("json-null", b"null"),
        keyed("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
        keyed("huge-int", b'{"specversion": "1.0", "id": ' + b"9" * 5000 + b"}"),
        keyed("lone-surrogate", b'{"specversion": "1.0", "subject": "\\ud800"}'),
        keyed("near-limit", b'{"pad": "' + b"x" * 999_000 + b'"}'),
        # Events whose envelope or data is wrong; the session is in the body.
        body("wrong-specversion", lambda s: envelope(s, cart(s, sku), specversion="0.3")),
        body("wrong-type", lambda s: envelope(s, cart(s, sku), type="CheckoutRequestedd")),
        body("missing-id", lambda s: {k: v for k, v in envelope(s, cart(s, sku)).items() if k != "id"}),
        body("bad-time", lambda s: envelope(s, cart(s, sku), time="yesterday")),
        body("extra-field", lambda s: envelope(s, {**cart(s, sku), "admin": True})),
        body("no-items", lambda s: envelope(s, cart(s, sku, items=[]))),
        body("too-many-items", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": f"S{i}", "quantity": 1, "unit_price": 1} for i in range(101)]))),
        body("quantity-zero", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 0, "unit_price": 500}]))),
        body("quantity-huge", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 10**9, "unit_price": 500}]))),
        body("negative-price", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": -1}]))),
        body("float-price", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": 4.99}]))),
        body("string-price", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": "500"}]))),
        body("duplicate-sku", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": 500}] * 2))),
        body("price-over-int64", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": 10**20}], promo_code="STORM10"))),
        body("subtotal-over-int64", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1000, "unit_price": INT64_MAX // 999}]))),
        body("nul-customer", lambda s: envelope(s, cart(s, sku, customer_id="cust\u0000"))),
        body("nul-sku", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": f"{sku}\u0000", "quantity": 1, "unit_price": 500}]))),
        body("nul-address", lambda s: envelope(s, cart(s, sku, shipping_address={
            "name": "A\u0000", "line1": "1 Main St", "city": "X", "postal_code": "1",
            "country": "US"}))),
        body("nul-promo", lambda s: envelope(s, cart(s, sku, promo_code="BF\u0000"))),
        body("nul-token", lambda s: envelope(s, cart(s, sku, payment={
            "method": "card", "token": "tok_\u0000"}))),
        body("nul-event-id", lambda s: envelope(s, cart(s, sku), id="id\u0000")),
        body("long-customer", lambda s: envelope(s, cart(s, sku, customer_id="c" * 100_000))),
        body("big-address", lambda s: envelope(s, cart(s, sku, shipping_address={
            "name": big_name, "line1": "1", "city": "X", "postal_code": "1", "country": "US"}))),
        body("subject-mismatch", lambda s: envelope(s, cart(s, sku), subject=uid("other"))),
        # Valid shape, business failures: the right reason, not INVALID_REQUEST.
        body("unknown-sku", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": uid("NOPE"), "quantity": 1, "unit_price": 500}])), reason="UNKNOWN_SKU",
            dead_letter=False),
        body("unknown-promo", lambda s: envelope(s, cart(s, sku, promo_code=uid("NOPROMO"))),
             reason="PROMO_INVALID", dead_letter=False),
        body("price-changed", lambda s: envelope(s, cart(s, sku, items=[
            {"sku": sku, "quantity": 1, "unit_price": 499}])), reason="PRICE_CHANGED",
            dead_letter=False),
        # No session anywhere: only a dead letter is due.
        unkeyed("no-key-garbage", b"garbage"),
        unkeyed("no-key-empty", b""),
        lambda: Hostile("bad-key-garbage", T, "not a session id!" * 20, b"{}"),
    ]


def hostile_elsewhere() -> list[Callable[[], Hostile]]:
    """The other topics read from outside, and internal topics a confused
    client might write to: only dead letters are due there."""
    def make(kind: str, topic: str, value: bytes | None) -> Callable[[], Hostile]:
        return lambda: Hostile(kind, topic, uid("he"), value)

    order_event = {"specversion": "1.0", "id": "x", "source": "urn:test", "type": "OrderShipped",
                   "time": "2026-11-25T10:00:00Z", "datacontenttype": "application/json",
                   "data": {"order_id": "ord\u0000", "checkout_session_id": "cs"}}
    return [
        make("orders-garbage", "orders.requests", b"\x00\x01garbage"),
        make("orders-near-limit", "orders.requests", b'{"pad": "' + b"y" * 999_000 + b'"}'),
        make("fulfillment-nul", "fulfillment.events", raw(order_event)),
        make("fulfillment-deep", "fulfillment.events", b"{" * 50_000),
        make("replies-garbage", "saga.replies", b"not a reply"),
        make("replies-near-limit", "saga.replies", b"z" * 999_000),
        make("inventory-garbage", "saga.inventory.commands", b"[]"),
        make("payment-near-limit", "saga.payment.commands", b"p" * 999_000),
        make("orders-cmd-garbage", "saga.orders.commands", b'{"type": "CreateOrder"}'),
        make("promotions-garbage", "saga.promotions.commands", b"\xff"),
    ]


def with_hostile_headers(h: Hostile) -> Hostile:
    """The same message with more headers than the limit (32): whatever its
    body, a request is refused INVALID_REQUEST and dead-lettered."""
    headers = [(f"h{i}", b"v" * 100) for i in range(300)]
    return Hostile(h.kind + "+headers", h.topic, h.key, h.value, headers, h.answers,
                   "INVALID_REQUEST" if h.answers else None, True)


def test_a_storm_of_hostile_input_stops_nothing_and_answers_every_readable_request(
        workers, bus: Bus, env) -> None:
    rng = random.Random(20261202)
    sku = uid("STORM")
    cli(env, "stock", "set", sku, "--price", "500", "--quantity", "100000")
    cli(env, "promo", "create", "STORM10", "--percent-off", "10", "--max-uses", "100000")
    makers = hostile_requests(sku) + hostile_elsewhere()
    hostile = [rng.choice(makers)() for _ in range(1000)]
    hostile = [with_hostile_headers(h) if rng.random() < 0.05 else h for h in hostile]
    valid = [uid("ok") for _ in range(100)]

    # A producer that takes what a careless cart sends (messages up to 1 MB).
    producer = Producer({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
                         "linger.ms": 5, "message.max.bytes": 2 * MB})
    order: list[Hostile | str] = [*hostile, *valid]
    rng.shuffle(order)
    refused: list[Hostile] = []

    def sent(h: Hostile) -> Callable[[Any, Any], None]:
        return lambda err, _m: refused.append(h) if err is not None else None

    for item in order:
        while True:
            try:
                if isinstance(item, str):
                    producer.produce("checkout.requested", key=item.encode(),
                                     value=checkout_event(item, [(sku, 1, 500)]))
                else:
                    producer.produce(item.topic, key=item.key.encode() if item.key else None,
                                     value=item.value, headers=item.headers,
                                     on_delivery=sent(item))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    del producer  # its broker connections end before the stack does
    # The broker may refuse what is over its own limit: that never reached us.
    hostile = [h for h in hostile if h not in refused]
    assert len(hostile) > 900, f"the broker refused {len(refused)} messages"

    answered = [h for h in hostile if h.answers]
    due = set(valid) | {h.answers for h in answered if h.answers}
    results = bus.wait_for("checkout.results", due, timeout=240)
    missing = sorted(s for s in due if not results[s])
    kinds = {h.answers: h.kind for h in answered}
    assert not missing, (f"{len(missing)} sessions never answered, e.g. "
                         f"{[(s, kinds.get(s, 'valid')) for s in missing[:10]]}")
    time.sleep(3)  # anything extra would show up now
    results = bus.wait_for("checkout.results", due, timeout=1)

    for sid in valid:
        types = {r["type"] for r in results[sid]}
        assert types == {"CheckoutSucceeded"}, (sid, results[sid])
    wrong: list[tuple[str, str, Any]] = []
    for h in answered:
        got = results[h.answers]  # type: ignore[index]
        ids = {r["id"] for r in got}
        if len(ids) != 1:
            wrong.append((h.kind, "answers with different ids", [r["data"] for r in got]))
            continue
        first = got[0]
        if first["type"] != "CheckoutFailed" or (
                h.reason is not None and first["data"]["reason"] != h.reason):
            wrong.append((h.kind, "wrong answer", first["data"]))
    by_kind = Counter(k for k, _, _ in wrong)
    assert not wrong, f"{len(wrong)} wrong answers by kind {dict(by_kind)}; first: {wrong[:3]}"

    # Nothing lost: every hostile message that is not a valid event is in its
    # topic's dead letters, found by its source offset.
    expected: dict[str, list[Hostile]] = defaultdict(list)
    for h in hostile:
        if h.dead_letter:
            expected[h.topic].append(h)
    for topic, items in expected.items():
        keys = Counter(h.key for h in items if h.key)
        unkeyed = sum(1 for h in items if not h.key)
        end = time.monotonic() + 60
        while True:
            letters = bus.poll(f"{topic}.dlq", 0.5)
            have = Counter(r["key"] for r in letters)
            short = {k: n for k, n in keys.items() if have[k] < n}
            if not short or time.monotonic() > end:
                break
        assert not short, f"{len(short)} hostile messages on {topic} were never dead-lettered"
        assert have[None] + have[""] >= unkeyed, (topic, unkeyed)
        for r in letters:
            assert len(r["raw"] or b"") <= MB, "a dead letter bigger than the producer's limit"

    report = cli(env, "verify", check=False)
    assert report.returncode == 0, report.stdout + report.stderr
