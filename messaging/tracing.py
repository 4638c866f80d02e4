"""OpenTelemetry tracing: one checkout is one trace across the coordinator,
the services and the timers.

How the trace travels:
- every message we publish goes through an outbox, and ``outbox.enqueue``
  adds the W3C ``traceparent`` of the span in hand to its Kafka headers;
- every consumer loop wraps its handler in ``instrument``: it extracts the
  ``traceparent`` from the message's headers and handles the message inside a
  CONSUMER span that continues that trace (a request without one starts a
  new trace);
- the coordinator keeps the trace of the checkout request in the saga's
  context, so work started by a deadline (no message in hand) continues the
  same trace (``resumed``);
- when a step is answered the coordinator records a span for the whole step,
  from its command to its answer (``record_step``).

Export is off by default (``CHECKOUT_OTEL_EXPORTER=none``): no span is then
made at all, yet the trace id is still read, made and propagated (kept in
``logs.TRACE``, ~5 us a message), so logs carry trace ids for free. The SDK's
span machinery costs ~40 us a message: paid only when spans are exported. ``console`` prints spans,
``otlp`` sends them over OTLP/HTTP (``pip install checkout-saga[otlp]``;
endpoint from the standard ``OTEL_EXPORTER_OTLP_*`` variables). Tests pass
their own exporter (the in-memory one) to ``configure``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from confluent_kafka import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from messaging import logs, metrics

log = logging.getLogger(__name__)

EXPORTERS = ("none", "console", "otlp")
TRACEPARENT = "traceparent"
# Saga context key under which the checkout's trace is kept (see ``resumed``).
SAGA_CONTEXT_KEY = "traceparent"

_PROPAGATOR = TraceContextTextMapPropagator()
_state: dict[str, Any] = {"provider": None, "tracer": None, "exporting": False}

Handler = Callable[[Message], Awaitable[None]]


def configure(
    exporter: str = "none",
    service_name: str = "checkout-saga",
    span_exporter: SpanExporter | None = None,
    sample_ratio: float = 1.0,
) -> None:
    """Set this process's tracer (call once at start; tests call it again).

    Our own provider, not OpenTelemetry's global one, which can be set only
    once per process.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown trace exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    old = _state["provider"]
    exporting = span_exporter is not None or exporter != "none"
    sampler = ParentBased(TraceIdRatioBased(sample_ratio)) if exporting else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    _state.update(provider=provider, tracer=provider.get_tracer("checkout_saga"), exporting=exporting)
    if old is not None:
        old.shutdown()


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "CHECKOUT_OTEL_EXPORTER=otlp needs the OTLP exporter: pip install 'checkout-saga[otlp]'"
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


def shutdown() -> None:
    """Flush what is still buffered (the batch processors) at process exit."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()
        _state.update(provider=None, tracer=None, exporting=False)


def tracer() -> trace.Tracer:
    if _state["tracer"] is None:
        configure()
    return _state["tracer"]  # type: ignore[no-any-return]


# ---- carrying the context in headers -------------------------------------------------


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) of a W3C ``traceparent``
    (``00-<trace id>-<parent id>-<flags>``); None when absent or malformed."""
    parts = value.split("-") if value else ()
    if len(parts) < 4 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ids = (int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16))
    except ValueError:
        return None
    return ids if ids[0] and ids[1] else None


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def current_traceparent() -> str | None:
    ids = logs.TRACE.get()
    if ids is not None:
        return format_traceparent(*ids)
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    if _state["exporting"]:  # the propagator also carries tracestate
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get(TRACEPARENT)
    return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def inject(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` plus the current span's ``traceparent`` (one already there wins)."""
    out = dict(headers)
    if TRACEPARENT not in out:
        traceparent = current_traceparent()
        if traceparent:
            out[TRACEPARENT] = traceparent
    return out


def _message_headers(msg: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in msg.headers() or ():
        key, value = item[0], item[1]
        if key in (TRACEPARENT, "tracestate") and value is not None:
            out[key] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return out


@contextlib.contextmanager
def _untraced(parent: tuple[int, int, int] | None) -> Iterator[None]:
    """Export off: the trace of ``parent`` (or a new one) with a span id of
    our own, current for the block, so logs and outgoing headers carry it."""
    span_id = random.getrandbits(64) or 1
    ids = (random.getrandbits(128) or 1, span_id, 0) if parent is None else (parent[0], span_id, parent[2])
    token = logs.TRACE.set(ids)
    try:
        yield
    finally:
        logs.TRACE.reset(token)


def instrument(worker: str, handler: Handler) -> Handler:
    """Handle each message inside a CONSUMER span continuing the sender's trace,
    with its session id in the log context, and count it."""

    async def handle(msg: Message) -> None:
        with consuming(worker, msg):
            await handler(msg)

    return handle


@contextlib.contextmanager
def consuming(worker: str, msg: Message) -> Iterator[None]:
    """The span, log context and count of one consumed message; the batch
    path wraps each message's share of a batch in it."""
    key = msg.key()
    session = key.decode("utf-8", "replace") if key else None
    token = logs.SESSION_ID.set(session)
    started = time.perf_counter()
    try:
        if not _state["exporting"]:
            with _untraced(parse_traceparent(_message_headers(msg).get(TRACEPARENT))):
                yield
        else:
            parent = _PROPAGATOR.extract(_message_headers(msg))
            attributes: dict[str, str | int] = {
                "messaging.system": "kafka",
                "messaging.operation": "process",
                "messaging.destination.name": msg.topic() or "",
                "messaging.consumer.group.name": worker,
                "messaging.kafka.destination.partition": msg.partition() or 0,
                "messaging.kafka.message.offset": msg.offset() or 0,
                "checkout.session_id": session or "",
            }
            with tracer().start_as_current_span(
                f"process {msg.topic()}", context=parent, kind=SpanKind.CONSUMER,
                attributes=attributes,
            ):
                yield
    finally:
        logs.SESSION_ID.reset(token)
    metrics.observe_handled(worker, msg.topic() or "", time.perf_counter() - started)


@contextlib.contextmanager
def resumed(traceparent: str | None, name: str, session_id: str) -> Iterator[None]:
    """Work on a saga without a message in hand (a deadline): continue the
    checkout's trace from the ``traceparent`` kept in the saga's context."""
    token = logs.SESSION_ID.set(session_id)
    if not _state["exporting"]:
        try:
            with _untraced(parse_traceparent(traceparent)):
                yield
        finally:
            logs.SESSION_ID.reset(token)
        return
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent} if traceparent else {})
    try:
        with tracer().start_as_current_span(
            name, context=parent, kind=SpanKind.INTERNAL,
            attributes={"checkout.session_id": session_id},
        ):
            yield
    finally:
        logs.SESSION_ID.reset(token)


def record_step(
    step: str, outcome: str, session_id: str, seconds: float, saga_traceparent: str | None
) -> None:
    """A span for one saga step, from its command to its answer. Its parent is
    the checkout's request span; it links to the span that handled the answer."""
    if not _state["exporting"]:
        return
    here = trace.get_current_span().get_span_context()
    parent = (
        _PROPAGATOR.extract({TRACEPARENT: saga_traceparent}) if saga_traceparent
        else otel_context.get_current()
    )
    end = time.time_ns()
    span = tracer().start_span(
        f"saga step {step}",
        context=parent,
        kind=SpanKind.INTERNAL,
        attributes={"saga.step": step, "saga.step.outcome": outcome,
                    "checkout.session_id": session_id},
        links=[Link(here)] if here.is_valid else None,
        start_time=end - int(max(0.0, seconds) * 1e9),
    )
    span.end(end_time=end)


def saga_context() -> dict[str, str]:
    """What the coordinator keeps in a new saga's context: the trace of the
    checkout request, so later work on the saga joins the same trace."""
    traceparent = current_traceparent()
    return {SAGA_CONTEXT_KEY: traceparent} if traceparent else {}
