"""One checkout is one trace: the W3C traceparent travels in Kafka headers from
the cart through the coordinator and every service, a span per step, and the
timers continue the same trace. Spans are read with the in-memory exporter,
so the workers run in this process: all roles, on a broker and a database of
their own (the session's worker must not take these messages)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from confluent_kafka import Producer
from helpers import Bus, checkout_event, cli, uid
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.runtime import Runtime
from messaging import logs, tracing
from messaging.settings import Settings

STEPS = ("reserve_stock", "create_order", "authorize_payment", "commit_stock", "capture_payment",
         "confirm_order")
COMMAND_TOPICS = ("saga.inventory.commands", "saga.payment.commands", "saga.orders.commands")


@dataclass
class Traced:
    env: dict[str, str]
    bus: Bus
    spans: InMemorySpanExporter

    def of(self, session_id: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans()
                if (s.attributes or {}).get("checkout.session_id") == session_id]


@pytest.fixture(scope="module")
async def traced(stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Traced]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("traced")
    exporter = InMemorySpanExporter()
    tracing.configure(span_exporter=exporter, service_name="checkout-saga-test")
    broker = EmbeddedStack(tmp / "broker")
    found = await asyncio.to_thread(broker.start, database=stack.env["DATABASE_URL"],
                                    redis=stack.env["REDIS_URL"])
    admin_dsn = stack.env["DATABASE_URL"]
    name = uid("traced").replace("-", "_")
    await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    settings = Settings(
        kafka_bootstrap_servers=found.kafka_bootstrap, database_url=dsn, redis_url=found.redis_url,
        checkout_data_dir=tmp / "data", checkout_payment_timeout_seconds=1.0,
        checkout_gateway_late_answer_seconds=60.0, checkout_step_timeout_seconds=5.0,
        checkout_metrics_port=-1,
    ).model_copy(update=broker.client_settings)
    env = {**stack.env, "KAFKA_BOOTSTRAP_SERVERS": found.kafka_bootstrap, "DATABASE_URL": dsn,
           "CHECKOUT_DATA_DIR": str(tmp / "data")}
    stop = asyncio.Event()
    running = asyncio.create_task(Runtime(settings).run(stop))
    bus = Bus(found.kafka_bootstrap)
    try:
        sku = uid("TRWARM")
        await asyncio.to_thread(cli, env, "stock", "set", sku, "--price", "100", "--quantity", "5")
        warm = uid("trwarm")
        await asyncio.to_thread(send, found.kafka_bootstrap, warm, checkout_event(warm, [(sku, 1, 100)]))
        assert (await asyncio.to_thread(bus.result, warm, 60))["type"] == "CheckoutSucceeded"
        yield Traced(env, bus, exporter)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await asyncio.to_thread(bus.close)
        broker.stop()
        await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tracing.configure()  # back to "none" for whatever runs next in this process


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def send(bootstrap: str, key: str, value: bytes, headers: dict[str, str] | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce("checkout.requested", key=key.encode(), value=value,
                     headers=list((headers or {}).items()))
    producer.flush(10)


def consumer_topics(spans: Sequence[ReadableSpan]) -> set[str]:
    return {str((s.attributes or {})["messaging.destination.name"])
            for s in spans if s.kind is SpanKind.CONSUMER}


def only(spans: Sequence[ReadableSpan], **want: Any) -> ReadableSpan:
    found = [s for s in spans if all((s.attributes or {}).get(k) == v for k, v in want.items())
             and s.kind is SpanKind.CONSUMER]
    assert len(found) == 1, (want, [s.name for s in found])
    return found[0]


async def test_a_checkout_is_one_trace_from_the_cart_through_every_service(traced: Traced) -> None:
    sku, sid = uid("TR"), uid("tr-ok")
    await asyncio.to_thread(cli, traced.env, "stock", "set", sku, "--price", "250", "--quantity", "5")
    trace_id, cart_span = secrets.token_hex(16), secrets.token_hex(8)
    await asyncio.to_thread(send, traced.bus.bootstrap, sid, checkout_event(sid, [(sku, 2, 250)]),
                            {"traceparent": f"00-{trace_id}-{cart_span}-01"})
    result = await asyncio.to_thread(traced.bus.result, sid, 30)
    assert result["type"] == "CheckoutSucceeded"

    # The cart sees its own trace on the result.
    rows = [r for r in traced.bus.poll("checkout.results", 0) if r["key"] == sid]
    assert rows and rows[0]["headers"]["traceparent"].startswith(f"00-{trace_id}-")

    spans = traced.of(sid)
    assert spans and {format(s.context.trace_id, "032x") for s in spans} == {trace_id}
    assert {"checkout.requested", "saga.replies", *COMMAND_TOPICS} <= consumer_topics(spans)
    request = only(spans, **{"messaging.destination.name": "checkout.requested"})
    assert request.parent is not None and format(request.parent.span_id, "016x") == cart_span

    # A span per step, each a child of the checkout's request span, timed from
    # its command to its answer.
    steps = {s.name: s for s in spans if s.name.startswith("saga step ")}
    assert set(steps) == {f"saga step {name}" for name in STEPS}, sorted(steps)
    for span in steps.values():
        assert span.parent is not None and span.parent.span_id == request.context.span_id
        assert span.attributes["saga.step.outcome"] == "succeeded"  # type: ignore[index]
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time > span.start_time

    # Causality across processes' boundaries: the inventory's ReserveStock span
    # continues the coordinator span that sent it.
    by_id = {s.context.span_id: s for s in spans}
    for span in spans:
        if span.kind is SpanKind.CONSUMER and span is not request:
            assert span.parent is not None and span.parent.span_id in by_id, span.name
    reserve = min((s for s in spans if s.name == "process saga.inventory.commands"),
                  key=lambda s: s.start_time or 0)
    assert reserve.parent is not None and reserve.parent.span_id == request.context.span_id


async def test_work_started_by_a_deadline_continues_the_checkouts_trace(traced: Traced) -> None:
    sku, sid = uid("TRTO"), uid("tr-timeout")
    await asyncio.to_thread(cli, traced.env, "stock", "set", sku, "--price", "100", "--quantity", "5")
    await asyncio.to_thread(send, traced.bus.bootstrap, sid,
                            checkout_event(sid, [(sku, 1, 100)], token="tok_timeout"))
    result = await asyncio.to_thread(traced.bus.result, sid, 30)
    assert result["data"]["reason"] == "PAYMENT_TIMEOUT"
    await asyncio.sleep(0.3)  # the last compensation's reply is handled after the result is out

    spans = traced.of(sid)
    traces = {s.context.trace_id for s in spans}
    assert len(traces) == 1, "the checkout's spans are spread over several traces"
    deadline = [s for s in spans if s.name == "saga deadline"]
    assert deadline, sorted(s.name for s in spans)
    # The void sent on timeout is handled by payment inside the same trace, under the deadline.
    voids = [s for s in spans if s.name == "process saga.payment.commands"
             and s.parent is not None and s.parent.span_id in {d.context.span_id for d in deadline}]
    assert voids, "the compensation sent by the timer did not continue the trace"
    compensated = {s.name for s in spans if (s.attributes or {}).get("saga.step.outcome") == "compensated"}
    assert {"saga step create_order", "saga step reserve_stock"} <= compensated


def test_json_logs_carry_the_session_id_and_the_trace_id() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(span_exporter=exporter)
    try:
        record = logging.LogRecord("checkout", logging.INFO, __file__, 1, "reserved %s", ("SKU-1",), None)
        token = logs.SESSION_ID.set("cs-logs")
        try:
            with tracing.tracer().start_as_current_span("work") as span:
                line = json.loads(logs.JsonFormatter().format(record))
        finally:
            logs.SESSION_ID.reset(token)
        ctx = span.get_span_context()
        assert line["msg"] == "reserved SKU-1" and line["level"] == "INFO"
        assert line["checkout_session_id"] == "cs-logs"
        assert line["trace_id"] == format(ctx.trace_id, "032x")
        assert line["span_id"] == format(ctx.span_id, "016x")
        outside = json.loads(logs.JsonFormatter().format(record))
        assert "checkout_session_id" not in outside and "trace_id" not in outside
    finally:
        tracing.configure()


def test_with_export_off_the_workers_still_carry_the_carts_trace(workers, bus: Bus, env) -> None:  # type: ignore[no-untyped-def]
    sku, sid = uid("TROFF"), uid("tr-off")
    cli(env, "stock", "set", sku, "--price", "100", "--quantity", "5")
    trace_id = secrets.token_hex(16)
    send(bus.bootstrap, sid, checkout_event(sid, [(sku, 1, 100)]),
         {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert bus.result(sid)["type"] == "CheckoutSucceeded"
    rows = [r for r in bus.poll("checkout.results", 0) if r["key"] == sid]
    assert rows[0]["headers"]["traceparent"].split("-")[1] == trace_id
    confirmed = [r for r in bus.poll("orders.confirmed", 1) if r["key"] == sid]
    assert confirmed and confirmed[0]["headers"]["traceparent"].split("-")[1] == trace_id


def test_with_export_off_ids_still_travel_but_nothing_is_recorded() -> None:
    tracing.configure("none")
    with tracing.tracer().start_as_current_span("work") as span:
        assert not span.is_recording()
        headers = tracing.inject({"dlq.stage": "x"})
    assert headers["dlq.stage"] == "x"
    assert headers["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert trace.get_current_span().get_span_context().is_valid is False
