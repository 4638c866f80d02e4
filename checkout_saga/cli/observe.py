"""Operator commands for looking at the system: ``analytics`` (the faust app
and its live dashboard), ``saga graph`` (the saga as a Mermaid diagram, one
instance's progress marked), and the readable timeline of ``saga show``.

Registered on the main app by ``checkout_saga.cli.app`` (``register``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from checkout_saga.cli.console import err
from checkout_saga.cli.params import ensure_can_bind, port_option

# Colour of each step-log kind in ``saga show``.
KIND_STYLES: dict[str, str] = {
    "started": "bold",
    "command": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "timeout": "yellow",
    "retry-scheduled": "yellow",
    "compensating": "magenta",
    "compensated": "magenta",
    "late-reply": "yellow",
    "dead-letter": "bold white on red",
    "gave-up": "bold white on red",
    "ignored": "dim",
    "repeat": "dim",
}
STATUS_STYLES: dict[str, str] = {
    "SUCCEEDED": "bold green",
    "FAILED": "bold red",
    "RUNNING": "bold cyan",
    "COMPENSATING": "bold magenta",
}
_ANSWERS = ("succeeded", "failed", "compensated")


@dataclass(frozen=True)
class TimelineRow:
    elapsed: float  # seconds since the first entry
    delta: float  # seconds since the entry before
    took: float | None  # for an answer: seconds since its step's last command
    step: str
    kind: str
    detail: str


def timeline(entries: Sequence[Mapping[str, Any]]) -> list[TimelineRow]:
    """The step log with durations: since the start, since the entry before,
    and for each answer how long its step took (from its last command)."""
    rows: list[TimelineRow] = []
    sent: dict[str, datetime] = {}
    first = prev = None
    for e in entries:
        at = e["at"] if isinstance(e["at"], datetime) else datetime.fromisoformat(e["at"])
        first = first or at
        prev = prev or at
        took = None
        if e["kind"] == "command":
            sent[e["step"]] = at
        elif e["kind"] in _ANSWERS and e["step"] in sent:
            took = (at - sent.pop(e["step"])).total_seconds()
        rows.append(TimelineRow((at - first).total_seconds(), (at - prev).total_seconds(), took,
                                e["step"], e["kind"], e["detail"]))
        prev = at
    return rows


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m {rest:04.1f}s"


def timeline_table(entries: Sequence[Mapping[str, Any]]) -> Table:
    table = Table("elapsed", "+", "step", "event", "detail", "took", header_style="bold")
    for row in timeline(entries):
        style = KIND_STYLES.get(row.kind, "")
        table.add_row(
            duration(row.elapsed),
            Text("+" + duration(row.delta), style="dim"),
            Text(row.step, style="dim" if row.step == "-" else ""),
            Text(row.kind, style=style),
            Text(row.detail, style="dim" if row.kind in ("ignored", "repeat") else ""),
            Text(duration(row.took), style=style) if row.took is not None else "",
        )
    return table


def saga_heading(found: Mapping[str, Any]) -> Text:
    status = str(found["status"])
    text = Text.assemble(
        (str(found["checkout_session_id"]), "bold"), "  ",
        (status, STATUS_STYLES.get(status, "bold")),
        f"  definition v{found['definition_version']}",
    )
    if found.get("stuck"):
        what = "a compensation" if status == "COMPENSATING" else "an action past the pivot"
        text.append(f"  STUCK: {what} was dead-lettered", style="bold white on red")
    if found.get("created_at") and found.get("finished_at"):
        took = datetime.fromisoformat(found["finished_at"]) - datetime.fromisoformat(found["created_at"])
        text.append(f"  took {duration(took.total_seconds())}")
    if found.get("order_id") and status == "SUCCEEDED":
        text.append(f"  order {found['order_id']}")
    return text


PORT_OPT = port_option("Dashboard port (CHECKOUT_ANALYTICS_PORT).")


# ---- commands ----------------------------------------------------------------------


def saga_graph(
    session_id: str | None = typer.Argument(None, help="Mark this checkout's progress."),
    version: int | None = typer.Option(None, "--version", help="Definition version (default: current)."),
) -> None:
    """The saga definition as a Mermaid flowchart; with SESSION_ID, that saga's progress marked."""
    from checkout_saga.bootstrap import run
    from checkout_saga.cli.common import settings_for_command, with_pool
    from saga import queries as saga_queries
    from saga.definition import CURRENT, DEFINITIONS
    from saga.graph import mermaid, progress_from_log

    progress = None
    if version is not None and version not in DEFINITIONS:
        err.print(f"[red]No saga definition v{version}; known: {sorted(DEFINITIONS)}.[/red]")
        raise typer.Exit(2)
    definition = DEFINITIONS[version] if version is not None else CURRENT
    if session_id:
        settings = settings_for_command()
        found = run(with_pool(settings, "saga", lambda conn: saga_queries.show(conn, session_id)))
        if found is None:
            err.print(f"[red]No saga for checkout session {session_id}.[/red]")
            raise typer.Exit(1)
        definition = DEFINITIONS[found["definition_version"]]
        progress = progress_from_log(session_id, found["status"], found["steps"])
    typer.echo(mermaid(definition, progress), nl=False)


def analytics(
    host: str | None = typer.Option(None, "--host", help="Dashboard address (CHECKOUT_ANALYTICS_HOST)."),
    port: int | None = PORT_OPT,
) -> None:
    """Run the analytics app (faust) and its live dashboard at http://HOST:PORT/.

    Windowed tables over the checkout and order topics (outcomes, failure
    reasons, conversion, latency percentiles, SKU demand); marks hot SKUs.
    """
    import faust

    from analytics.app import Analytics
    from analytics.settings import AnalyticsSettings
    from checkout_saga import bootstrap
    from checkout_saga.hot_marker import InventoryHotMarker
    from messaging import logs

    settings = bootstrap.operator_settings()
    if not settings.kafka_bootstrap_servers or not (settings.database_url or settings.saga_database_url):
        err.print("[red]No Kafka or database: set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, "
                      "or start `checkout-saga up` first.[/red]")
        raise typer.Exit(2)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    options = AnalyticsSettings(**overrides)  # type: ignore[arg-type]
    ensure_can_bind(options.host, options.port)  # before announcing the address
    logs.setup(settings.checkout_log_level, settings.checkout_log_format)
    app = Analytics(settings, options, InventoryHotMarker(settings)).app
    err.print(f"analytics dashboard on http://{options.host}:{options.port}/")
    # faust's worker owns the event loop and the signals until it stops.
    worker = faust.Worker(app, loglevel=settings.checkout_log_level.lower(),
                          redirect_stdouts=False, logging_config=_faust_logging(settings))
    worker.execute_from_commandline()


def _faust_logging(settings: Any) -> dict[str, Any]:
    """faust configures logging itself: give it our JSON (or text) format."""
    formatter = ({"()": "messaging.logs.JsonFormatter"} if settings.checkout_log_format == "json"
                 else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "root": {"level": settings.checkout_log_level.upper(), "handlers": ["stderr"]},
    }


def register(app: typer.Typer, saga_app: typer.Typer) -> None:
    app.command("analytics")(analytics)
    saga_app.command("graph")(saga_graph)
