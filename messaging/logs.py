"""Structured JSON logs: one object per line, carrying the checkout session
id and the trace id of whatever the worker is handling.

The session id travels in a context variable that the consumer loop sets per
message (``tracing.instrument``), so every log line a handler writes, however
deep, says which checkout it is about without passing it around. The trace id
comes from the current OpenTelemetry span, so a log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

SESSION_ID: ContextVar[str | None] = ContextVar("checkout_session_id", default=None)
# (trace id, span id, flags) of the message in hand when spans are not
# exported (``tracing`` keeps it here: cheaper than an OpenTelemetry span).
TRACE: ContextVar[tuple[int, int, int] | None] = ContextVar("checkout_trace", default=None)

# Attributes every LogRecord has: anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        session = getattr(record, "checkout_session_id", None) or SESSION_ID.get()
        if session:
            out["checkout_session_id"] = session
        ids = TRACE.get()
        if ids is None:
            ctx = trace.get_current_span().get_span_context()
            ids = (ctx.trace_id, ctx.span_id, 0) if ctx.is_valid else None
        if ids is not None:
            out["trace_id"] = format(ids[0], "032x")
            out["span_id"] = format(ids[1], "016x")
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once per process: JSON lines on stderr, or
    the plain text format when ``fmt`` is ``text``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
