"""``checkout-saga bench``: the end-to-end benchmark (and its subcommands)."""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from checkout_saga import bootstrap, endpoints
from checkout_saga.cli.console import names_table
from checkout_saga.cli.params import file_argument
from checkout_saga.dev import bench, bench_inventory
from messaging.errors import OperatorInputError
from messaging.settings import Settings

app = typer.Typer(help="Benchmarks.", invoke_without_command=True)
REPORT_ARG = file_argument("A report written by `checkout-saga bench --json`.")
console = Console()


@app.callback()
def end_to_end(
    ctx: typer.Context,
    duration: float = typer.Option(10.0, "--duration", min=0.5, help="Seconds of load per run."),
    rate: float | None = typer.Option(None, "--rate", min=1, help="Checkouts/s (default: as fast as possible)."),
    workers: str = typer.Option("1", "--workers", help="Worker process counts to compare, e.g. 1,2,4."),
    window: int = typer.Option(1000, "--window", min=1, help="Max checkouts in flight when unthrottled."),
    layout: str = typer.Option(
        "split", "--layout",
        help="Roles per process in a worker: split (coordinator + timers | services), "
             "together (one process), per-role (six).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Drive a checkout mix end to end and compare it with a raw baseline."""
    if ctx.invoked_subcommand is not None:
        return
    counts = [int(x) for x in workers.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--workers takes positive integers, e.g. 1,2,4")
    if layout not in bench.LAYOUTS:
        raise typer.BadParameter(f"--layout is one of {', '.join(bench.LAYOUTS)}")
    settings = endpoints.resolve(Settings())
    if "checkout_partitions" not in settings.model_fields_set and not settings.kafka_bootstrap_servers:
        # The bench's own broker: one partition per process of a role in the largest run,
        # since every idle partition costs the broker a share of every fetch.
        settings = settings.model_copy(update={"checkout_partitions": max(counts)})
    if settings.kafka_bootstrap_servers or len(counts) == 1:
        # A fresh broker: topics made by an earlier bench may have other partition counts.
        with bootstrap.private_stack(settings, "bench-stack", fresh_kafka=True) as settings:
            report = run(settings, counts, duration, rate, window, as_json, layout)
    else:
        # The bench's own broker: a fresh stack (and baseline) per worker count.
        # tansu's produce cost grows with its log (on the fallback), and one generation of
        # workers after another on the same groups could leave the next
        # generation's warm-up checkout unanswered (seen with 1,2,4).
        reports = []
        for count in counts:
            with bootstrap.private_stack(settings, "bench-stack", fresh_kafka=True) as fresh:
                reports.append(run(fresh, [count], duration, rate, window, as_json, layout))
        report = reports[0] | {"runs": [r for each in reports for r in each["runs"]]}
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report)
    if not all(r["guarantees"]["ok"] for r in report["runs"]):
        raise typer.Exit(1)


def run(settings: Settings, counts: list[int], duration: float, rate: float | None,
        window: int, quiet: bool, layout: str) -> dict[str, Any]:
    asyncio.run(bench.prepare_all(settings))
    pg_equiv = asyncio.run(bench.baseline_postgres(settings))
    kafka_rt = bench.baseline_kafka(settings)
    runs = []
    for count in counts:
        procs = bench.start_workers(settings, count, settings.checkout_data_dir / "bench-logs", layout)
        try:
            run_id = uuid.uuid4().hex[:6]
            bench.warm(settings, run_id)
            asyncio.run(bench.seed(settings, run_id))
            result = bench.Run(run_id=run_id)
            with Progress(TextColumn(f"{count} worker(s), {layout}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, disable=quiet) as bar:
                task = bar.add_task("bench", total=None)
                elapsed = bench.drive(settings, result, duration, rate, window,
                                      lambda n: bar.update(task, completed=n))
            steps = asyncio.run(bench.step_latencies(settings, run_id))
            guarantees = asyncio.run(bench.check_guarantees(settings, result))
        finally:
            bench.stop_workers(procs)
        throughput = result.done / elapsed if elapsed else 0.0
        lat = bench.percentiles(result.latency_ms)
        runs.append({
            "workers": count, "checkouts": len(result.sent), "completed": result.done,
            "seconds": round(elapsed, 2), "throughput_per_s": round(throughput, 1),
            "latency_ms": {k: round(v, 1) for k, v in lat.items()},
            "steps_ms": {s: {k: round(v, 1) for k, v in p.items()} for s, p in steps.items()},
            "outcomes": result.outcomes, "guarantees": guarantees,
            "baseline": {"postgres_checkout_equivalents_per_s": round(pg_equiv, 1),
                         "kafka_round_trip_ms": {k: round(v, 2) for k, v in kafka_rt.items()}},
            "per_5s_window": bench.windows(result),
            "vs_baseline": {
                "throughput_ratio": round(throughput / pg_equiv, 3) if pg_equiv else None,
                "p50_ratio": round(lat["p50"] / kafka_rt["p50"], 1) if kafka_rt["p50"] else None,
                "p99_ratio": round(lat["p99"] / kafka_rt["p99"], 1) if kafka_rt["p99"] else None,
            },
        })
    return {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "rate": rate, "duration_s": duration, "partitions": settings.checkout_partitions,
        "layout": layout, "processes_per_worker": [list(p) for p in bench.LAYOUTS[layout]],
        "baseline": {"postgres_checkout_equivalents_per_s": round(pg_equiv, 1),
                     "kafka_round_trip_ms": {k: round(v, 2) for k, v in kafka_rt.items()}},
        "runs": runs,
    }


# One row per figure, one column per run: a run's ten figures side by side
# did not fit 80 columns (Rich cut them to "work…", "2708…").
FIGURES: tuple[tuple[str, Any], ...] = (
    ("checkouts", lambda r: r["completed"]),
    ("per s", lambda r: r["throughput_per_s"]),
    ("x baseline", lambda r: r["vs_baseline"]["throughput_ratio"]),
    ("p50 ms", lambda r: r["latency_ms"]["p50"]),
    ("p95 ms", lambda r: r["latency_ms"]["p95"]),
    ("p99 ms", lambda r: r["latency_ms"]["p99"]),
    ("max ms", lambda r: r["latency_ms"]["max"]),
    ("p99 / kafka RT", lambda r: r["vs_baseline"]["p99_ratio"]),
)


def render(report: dict[str, Any]) -> None:
    base = report["baseline"]
    console.print(f"{report['partitions']} partition(s) per topic; each worker is "
                  + " | ".join(" + ".join(p) for p in report["processes_per_worker"]))
    console.print(f"baseline: bare PostgreSQL transactions = {base['postgres_checkout_equivalents_per_s']} "
                  f"checkout-equivalents/s; bare Kafka round trip p50 {base['kafka_round_trip_ms']['p50']} ms, "
                  f"p99 {base['kafka_round_trip_ms']['p99']} ms")
    runs = report["runs"]
    table = names_table("", *(f"{r['workers']} worker(s)" for r in runs),
                        names=[name for name, _ in FIGURES], title="checkout-saga bench")
    for name, figure in FIGURES:
        table.add_row(name, *(str(figure(r)) for r in runs))
    table.add_row("guarantees", *("[green]ok[/green]" if r["guarantees"]["ok"]
                                  else f"[red]{_breaches(r['guarantees'])}[/red]" for r in runs))
    console.print(table)
    for r in runs:
        steps = names_table("step", "p50 ms", "p95 ms", "p99 ms", names=list(r["steps_ms"]),
                            title=f"per step, {r['workers']} worker(s)")
        for step, p in r["steps_ms"].items():
            steps.add_row(step, str(p["p50"]), str(p["p95"]), str(p["p99"]))
        console.print(steps)
        console.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())))
        console.print("results per second, 5 s windows: " + ", ".join(map(str, r["per_5s_window"])))


def _breaches(guarantees: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in guarantees.items() if k != "ok" and v)


@app.command("show")
def show(report: Path = REPORT_ARG) -> None:
    """Print a saved report (from `bench --json > FILE`) as tables."""
    try:
        render(json.loads(report.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise OperatorInputError(f"{report} is not a report of `checkout-saga bench --json` "
                                 f"({type(exc).__name__}: {exc})") from exc


# `checkout-saga bench inventory`: reservations per second, four ways (bench_inventory.py).
app.command("inventory")(bench_inventory.inventory)
