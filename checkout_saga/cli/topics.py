"""``checkout-saga topics``: create every topic before the workers start.

Run once per deploy (the Kubernetes Job and the compose ``topics`` service do);
safe to run again. Partitions, replication and retention come from the
environment (``CHECKOUT_PARTITIONS``, ``CHECKOUT_REPLICATION_FACTOR``,
``CHECKOUT_MIN_INSYNC_REPLICAS``, ``CHECKOUT_RETENTION_MS``,
``CHECKOUT_DLQ_RETENTION_MS``).
"""

from __future__ import annotations

import typer
from confluent_kafka import KafkaException
from rich.console import Console

from checkout_saga import bootstrap
from checkout_saga.cli import console as cli_console
from checkout_saga.cli.console import names_table
from checkout_saga.output import print_json
from messaging.topic_admin import (
    CreateReport,
    TopicSpec,
    create_topics,
    partition_counts,
    plan_topics,
)

topics_app = typer.Typer(help="Kafka topics: create them with their partitions.",
                         no_args_is_help=True)
_console = Console()
_err = cli_console.err


@topics_app.command("create")
def create(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; create nothing."),
    timeout: float = typer.Option(30.0, "--timeout", min=1.0, help="Seconds to wait for Kafka."),
) -> None:
    """Create every topic (external, internal, dead-letter) that does not exist yet."""
    settings = bootstrap.operator_settings()
    try:
        specs = plan_topics(settings)
    except ValueError as exc:
        _err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    if dry_run:
        _show(specs, None, as_json)
        return
    if not settings.kafka_bootstrap_servers:
        _err.print("[red]No Kafka: set KAFKA_BOOTSTRAP_SERVERS, or start `checkout-saga up` "
                   "first.[/red]")
        raise typer.Exit(2)
    try:
        report = create_topics(settings.kafka_bootstrap_servers, specs, timeout)
    except KafkaException as exc:
        _err.print(f"[red]Kafka refused to create topics: {exc.args[0]}[/red]")
        raise typer.Exit(1)
    _show(specs, report, as_json)


@topics_app.command("list")
def list_topics(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    timeout: float = typer.Option(30.0, "--timeout", min=1.0, help="Seconds to wait for Kafka."),
) -> None:
    """The project's topics on the broker: partitions found and planned, or missing."""
    settings = bootstrap.operator_settings()
    if not settings.kafka_bootstrap_servers:
        _err.print("[red]No Kafka: set KAFKA_BOOTSTRAP_SERVERS, or start `checkout-saga up` "
                   "first.[/red]")
        raise typer.Exit(2)
    specs = plan_topics(settings)
    try:
        found = partition_counts(settings.kafka_bootstrap_servers, [s.name for s in specs], timeout)
    except KafkaException as exc:
        _err.print(f"[red]Kafka at {settings.kafka_bootstrap_servers} did not answer: "
                   f"{exc.args[0]}[/red]")
        raise typer.Exit(1)
    rows = [{"name": s.name, "kind": s.kind, "partitions": found[s.name],
             "planned_partitions": s.partitions, "exists": found[s.name] is not None}
            for s in specs]
    if as_json:
        print_json(rows)
        return
    table = names_table("topic", "kind", "partitions", "planned", names=[s.name for s in specs])
    for r in rows:
        table.add_row(str(r["name"]), str(r["kind"]),
                      str(r["partitions"]) if r["exists"] else "[red]missing[/red]",
                      str(r["planned_partitions"]))
    _console.print(table)
    missing = sum(not r["exists"] for r in rows)
    if missing:
        _err.print(f"[yellow]{missing} topic(s) missing: run `checkout-saga topics create`.[/yellow]")


def _show(specs: tuple[TopicSpec, ...], report: CreateReport | None, as_json: bool) -> None:
    if as_json:
        out: dict[str, object] = {"topics": [_spec_json(s) for s in specs]}
        if report is not None:
            out |= report.as_dict()
        print_json(out)
        return
    differing = {str(d["topic"]): d for d in report.differing} if report else {}
    # Replicas are one figure for every topic: a line under the table, not a column.
    table = names_table("topic", "kind", "partitions", "retention", "status",
                        names=[s.name for s in specs])
    for s in specs:
        status = "planned"
        if report is not None:
            status = "created" if s.name in report.created else "existing"
        if s.name in differing:
            status += f" ({differing[s.name]['partitions']} partitions)"
        table.add_row(s.name, s.kind, str(s.partitions), _days(s.config.get("retention.ms")), status)
    _console.print(table)
    replicas = sorted({s.replication_factor for s in specs})
    _console.print(f"replicas per partition: {', '.join(map(str, replicas))}")
    if report is not None:
        _console.print(f"{len(report.created)} created, {len(report.existing)} already there")
    if differing:
        _err.print("[yellow]Some existing topics have another partition count than planned; "
                   "they were left as they are (see docs/operations.md, Sizing).[/yellow]")


def _days(retention_ms: str | None) -> str:
    """retention.ms as an operator reads it (the exact figure is in --json)."""
    if retention_ms is None:
        return "-"
    days = int(retention_ms) / 86_400_000
    return "forever" if days < 0 else f"{days:g} d"


def _spec_json(spec: TopicSpec) -> dict[str, object]:
    return {"name": spec.name, "kind": spec.kind, "partitions": spec.partitions,
            "replication_factor": spec.replication_factor, "config": dict(spec.config)}
