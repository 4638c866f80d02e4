"""Requests outside the contract's limits, through the topics only, as a careless
cart would send them: each gets exactly one CheckoutFailed INVALID_REQUEST,
goes to checkout.requested.dlq, and leaves nothing behind (no saga, no promo
use held in the Redis gate)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from helpers import Bus, checkout_event, cli, cli_json, uid

from services.promotions.redis_gate import keys

DLQ = "checkout.requested.dlq"


def with_data(raw: bytes, **changes: Any) -> bytes:
    event = json.loads(raw)
    event["data"].update(changes)
    # json.dumps writes U+0000 as the JSON escape \u0000, as any JSON encoder does.
    return json.dumps(event).encode()


def the_only_result(bus: Bus, sid: str, settle: float = 3.0) -> dict[str, Any]:
    """The session's one result, after waiting ``settle`` seconds for a second."""
    first = bus.result(sid, timeout=30)
    time.sleep(settle)
    found = bus.events_for("checkout.results", sid)
    assert len(found) == 1, found
    return first


def dead_letter(bus: Bus, sid: str, timeout: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [r for r in bus.poll(DLQ, 0.2) if r["key"] == sid]
        if found:
            assert len(found) == 1, found
            return found[0]
    raise AssertionError(f"{sid} never reached {DLQ}")


def test_nul_in_customer_id_gets_one_invalid_request_and_is_dead_lettered(
    workers, bus: Bus, env
) -> None:
    sku = uid("SKU-L")
    cli(env, "stock", "set", sku, "--price", "1000", "--quantity", "5")
    sid = uid("cs-nul")
    raw = with_data(checkout_event(sid, [(sku, 1, 1000)]), customer_id="cust\x0042")
    assert b'"cust\\u000042"' in raw
    bus.send("checkout.requested", sid, raw)
    bus.flush()

    result = the_only_result(bus, sid)
    assert result["type"] == "CheckoutFailed"
    assert result["data"]["reason"] == "INVALID_REQUEST"
    detail = result["data"]["detail"]
    assert "customer_id" in detail and "U+0000" in detail, detail
    letter = dead_letter(bus, sid)
    assert letter["raw"] == raw  # the original bytes
    assert "customer_id" in letter["headers"]["dlq.error"]
    shown = cli_json(env, "stock", "show", sku)
    assert (shown["available"], shown["held"], shown["sold"]) == (5, 0, 0)
    # The session ended there, so whatever comes for it later republishes this answer.
    saga = cli_json(env, "saga", "show", sid)
    assert saga["status"] == "FAILED" and saga["failure"]["reason"] == "INVALID_REQUEST", saga
    assert [s["kind"] for s in saga["steps"]] == ["rejected"]  # no step ran


def test_huge_price_with_a_percent_off_code_is_refused_at_intake_holding_no_use(
    workers, bus: Bus, env
) -> None:
    code = uid("PROMO-L").upper()
    cli(env, "promo", "create", code, "--percent-off", "10", "--max-uses", "5")
    sid = uid("cs-huge")
    # 3 x 10^20 cents: past a signed 64-bit integer, as is 10% of it.
    raw = checkout_event(sid, [(uid("SKU-L"), 3, 10**20)], promo_code=code)
    bus.send("checkout.requested", sid, raw)
    bus.flush()

    result = the_only_result(bus, sid)
    assert result["type"] == "CheckoutFailed"
    assert result["data"]["reason"] == "INVALID_REQUEST"
    assert "unit_price" in result["data"]["detail"], result
    assert dead_letter(bus, sid)["raw"] == raw
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        holders = {h.decode() for h in client.zrange(keys(code)[1], 0, -1)}
    finally:
        client.close()
    assert sid not in holders and holders == set()
    assert cli_json(env, "promo", "show", code)["used"] == 0


def test_a_request_over_the_header_limits_gets_one_invalid_request_and_is_dead_lettered(
    workers, bus: Bus, env
) -> None:
    """A valid body with 33 Kafka headers (the limit is 32): the session is
    read from the body and answered; a valid request behind it still runs."""
    sku = uid("SKU-L")
    cli(env, "stock", "set", sku, "--price", "1000", "--quantity", "5")
    sid, after = uid("cs-hdr"), uid("cs-hdr")
    raw = checkout_event(sid, [(sku, 1, 1000)])
    headers = [(f"x-note-{i}", b"v") for i in range(33)]
    bus.producer.produce("checkout.requested", key=sid.encode(), value=raw, headers=headers)
    bus.send("checkout.requested", after, checkout_event(after, [(sku, 1, 1000)]))
    bus.flush()

    result = the_only_result(bus, sid)
    assert (result["type"], result["data"]["reason"]) == ("CheckoutFailed", "INVALID_REQUEST")
    assert "33 headers" in result["data"]["detail"], result
    letter = dead_letter(bus, sid)
    assert letter["raw"] == raw and "33 headers" in letter["headers"]["dlq.error"]
    assert bus.result(after)["type"] == "CheckoutSucceeded"
    assert cli_json(env, "stock", "show", sku)["sold"] == 1
