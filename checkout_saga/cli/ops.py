"""Operator commands for incidents: verify, replay, dead letters, stuck sagas,
the supervisor and the chaos run.

Registered into the main ``checkout-saga`` app by ``register`` (called from
``checkout_saga.cli.app``), so this module does not import the CLI module.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from checkout_saga.bootstrap import run
from checkout_saga.cli import console as cli_console
from checkout_saga.cli.common import settings_for_command, setup_logging
from checkout_saga.output import print_json
from messaging.errors import OperatorInputError
from messaging.settings import Settings

T = TypeVar("T")
console = Console()
err = cli_console.err
JSON_OPT = typer.Option(False, "--json", help="Print JSON for scripts.")
dlq_app = typer.Typer(help="Dead letters: list them, put them back.", no_args_is_help=True)


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


OPERATOR_OPT = typer.Option(None, "--operator", help="Who acts (default: the login name).")


# ---- verify ---------------------------------------------------------------------------


def verify_cmd(
    as_json: bool = JSON_OPT,
    grace: float = typer.Option(30.0, "--grace", min=0,
                                help="Seconds an effect may lag its cause before it counts."),
    max_saga_age: float | None = typer.Option(
        None, "--max-saga-age", min=0,
        help="A saga running longer than this is past its deadline (default: the hold TTL)."),
    skip_topics: bool = typer.Option(False, "--skip-topics", help="Do not read orders.confirmed."),
) -> None:
    """Check the contract's guarantees over the live data; exit 1 on any breach."""
    from checkout_saga.ops.verify import VerifyOptions, verify

    settings = settings_for_command(db="saga", kafka=not skip_topics)
    options = VerifyOptions(grace=grace, read_topics=not skip_topics,
                            max_saga_age=max_saga_age or settings.checkout_hold_ttl_seconds)
    report = run(verify(settings, options))
    if as_json:
        print_json(report.as_json())
    else:
        _show_verify(report)
    if not report.ok:
        raise typer.Exit(1)


def _show_verify(report: Any) -> None:
    table = Table("", "check", "breaches", "note", title="checkout-saga verify")
    marks = {"ok": "[green]ok[/green]", "breach": "[red]BREACH[/red]",
             "skipped": "[dim]skipped[/dim]", "error": "[red]ERROR[/red]"}
    for c in report.checks:
        table.add_row(marks[c.status], c.title, str(c.count) if c.status != "skipped" else "-",
                      c.note)
    console.print(table)
    for c in report.checks:
        if c.breaches:
            sample = Table(*c.breaches[0].keys(), title=f"{c.name}: {c.count} breach(es)"
                           + (f", first {len(c.breaches)}" if c.count > len(c.breaches) else ""))
            for b in c.breaches:
                sample.add_row(*(json.dumps(v) if isinstance(v, list) else str(v)
                                 for v in b.values()))
            console.print(sample)
    figures = ", ".join(f"{k} {v}" for k, v in report.figures.items())
    console.print(f"figures: {figures}")
    console.print("[green]every guarantee holds[/green]" if report.ok
                  else f"[red]{report.breaches} breach(es): the guarantees do NOT hold[/red]")


# ---- replay ---------------------------------------------------------------------------


def replay_cmd(
    topic: list[str] = typer.Option(..., "--topic", help="Topic to replay (repeatable)."),
    since: str = typer.Option(..., "--since",
                              help="'beginning', an RFC 3339 time, or a duration ago (15m, 2h)."),
    group: str | None = typer.Option(
        None, "--group", help="Consumer group (default: every project group reading the topic)."),
    wait: float = typer.Option(0.0, "--wait", min=0,
                               help="Seconds to wait for the groups to be empty (workers stopped)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the new offsets, change nothing."),
    as_json: bool = JSON_OPT,
) -> None:
    """Rewind consumer groups to a point in time so that they reprocess from there."""
    from checkout_saga.ops.replay import ReplayError, parse_since, replay
    from messaging.topic_reader import TopicUnavailable

    try:
        start = parse_since(since, datetime.now(UTC))
        settings = settings_for_command(db=None, kafka=True)
        plans = replay(settings.kafka, topic, start, group, wait, dry_run)
    except (ReplayError, TopicUnavailable) as exc:
        err.print(f"[red]replay: {exc}[/red]")
        raise typer.Exit(2)
    if as_json:
        print_json({"since": start.isoformat() if start else "beginning", "dry_run": dry_run,
                    "partitions": [p.as_json() for p in plans]})
        return
    table = Table("group", "topic", "partition", "committed", "new", "to replay",
                  title=f"replay since {start.isoformat() if start else 'the beginning'}"
                  + (" (dry run)" if dry_run else ""))
    for p in plans:
        table.add_row(p.group, p.topic, str(p.partition), _num(p.committed),
                      _num(p.new) if p.new is not None else "unchanged", _num(p.to_replay))
    console.print(table)
    if not dry_run:
        console.print("offsets moved: start the workers of these groups to reprocess")


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


# ---- dead letters -------------------------------------------------------------------------


async def _with_ops_pool(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from checkout_saga.ops.dlq import migrate_ops
    from messaging.db import create_pool

    pool = await create_pool(settings.dsn_for("ops"), 2)
    try:
        await migrate_ops(pool)
        return await fn(pool)
    finally:
        await pool.close()


@dlq_app.command("list")
def dlq_list(
    topic: str = typer.Argument(..., help="The topic (or its .dlq topic)."),
    as_json: bool = JSON_OPT,
    stack: bool = typer.Option(False, "--stack", help="Include each error's stack."),
) -> None:
    """Show the dead letters of TOPIC: error, where they came from, whether redriven."""
    from checkout_saga.ops.dlq import READ_IDLE_SECONDS, dlq_name, list_dead_letters
    from messaging.topic_reader import TopicUnavailable, idle_after_end

    settings = settings_for_command(db="saga", kafka=True)
    try:
        letters = run(_with_ops_pool(
            settings, lambda pool: list_dead_letters(pool, settings.kafka, topic, idle=idle_after_end(settings, READ_IDLE_SECONDS))))
    except TopicUnavailable as exc:
        err.print(f"[red]dlq: {exc}[/red]")
        raise typer.Exit(2)
    entries = [d.as_json(with_stack=stack) for d in letters]
    if as_json:
        print_json(entries)
        return
    # One block per dead letter: errors are long, and a wide table would cut them.
    console.print(f"[bold]{dlq_name(topic)}[/bold]: {len(entries)} dead letter(s)")
    for e in entries:
        source = f"{e['source_topic']}[{_num(e['source_partition'])}]@{_num(e['source_offset'])}"
        redriven = f"redriven {e['redriven_at'][:19]}" if e["redriven"] else "not redriven"
        console.print(
            f"\n[bold]partition {e['partition']} offset {e['offset']}[/bold]  "
            f"{(e['timestamp'] or '')[:19]}  key {escape(e['key'] or '-')}  {redriven}\n"
            f"  from   {escape(source)} (stage {escape(e['stage'] or '-')})\n"
            f"  error  {escape(e['error'])}", soft_wrap=True, highlight=False)
        if stack and e.get("stack"):
            console.print(e["stack"], soft_wrap=True, highlight=False, markup=False)


@dlq_app.command("redrive")
def dlq_redrive(
    topic: str = typer.Argument(..., help="The topic (or its .dlq topic)."),
    partition: int | None = typer.Option(None, "--partition", min=0,
                                         help="Only the dead letters of this DLQ partition."),
    offset: list[int] | None = typer.Option(None, "--offset", min=0,
                                               help="Only the dead letters at these offsets of "
                                                    "--partition (which it needs)."),
    key: str | None = typer.Option(None, "--key", help="Only the dead letters with this key."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be put back."),
    operator: str | None = OPERATOR_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Put each dead letter of TOPIC back onto its source topic, once."""
    from checkout_saga.ops.dlq import READ_IDLE_SECONDS, list_dead_letters, redrive
    from messaging.kafka import AsyncProducer, producer_config
    from messaging.topic_reader import TopicUnavailable, idle_after_end

    if offset and partition is None:
        # Every partition has an offset 0: an offset alone would put back one letter of each.
        raise OperatorInputError("--offset needs --partition: offsets count within a partition "
                                 "(see `checkout-saga dlq list` for both)")
    settings = settings_for_command(db="saga", kafka=True)

    async def go(pool: Any) -> Any:
        letters = await list_dead_letters(pool, settings.kafka, topic, idle=idle_after_end(settings, READ_IDLE_SECONDS))
        producer = AsyncProducer(producer_config(settings))
        try:
            return await redrive(pool, producer, letters, operator=operator or _default_operator(),
                                 offsets=set(offset) if offset else None, key=key,
                                 partition=partition, dry_run=dry_run)
        finally:
            producer.close()

    try:
        result = run(_with_ops_pool(settings, go))
    except TopicUnavailable as exc:
        err.print(f"[red]dlq: {exc}[/red]")
        raise typer.Exit(2)
    if as_json:
        print_json({**result.as_json(), "dry_run": dry_run})
        return
    verb = "would put back" if dry_run else "put back"
    for e in result.redriven:
        console.print(f"{verb} {e['partition']}@{e['offset']} (key {e['key']}) -> {e['source_topic']}")
    console.print(f"{len(result.redriven)} {verb}; {result.skipped} already redriven before")
    if result.truncated:
        console.print(f"{result.truncated} truncated cop(ies) not put back: their original did "
                      "not fit the producer's limit (size and sha256 in `dlq list --json`)")


# ---- stuck sagas --------------------------------------------------------------------------


def saga_list(
    stuck: bool = typer.Option(False, "--stuck", help="Only the sagas that need an operator."),
    grace: float = typer.Option(30.0, "--grace", min=0,
                                help="Seconds past its deadline before a saga counts as stuck."),
    min_attempts: int = typer.Option(3, "--min-attempts", min=2,
                                     help="A step sent this many times counts as stuck."),
    older_than: float | None = typer.Option(None, "--older-than", min=0,
                                               help="A saga running longer counts as stuck."),
    limit: int = typer.Option(1000, "--limit", min=1),
    as_json: bool = JSON_OPT,
) -> None:
    """Sagas that have not ended (with --stuck: only those that will not end by themselves)."""
    from saga.admin import list_sagas

    settings = settings_for_command(db="saga")

    async def go() -> list[dict[str, Any]]:
        from messaging.db import create_pool

        pool = await create_pool(settings.dsn_for("saga"), 2)
        try:
            async with pool.acquire() as conn:
                return await list_sagas(conn, stuck_only=stuck, grace=grace,
                                        min_attempts=min_attempts, older_than=older_than,
                                        limit=limit)
        finally:
            await pool.close()

    found = run(go())
    if as_json:
        print_json(found)
        return
    table = Table("session", "status", "step", "command", "attempt", "age", "why",
                  title=f"{len(found)} {'stuck ' if stuck else ''}saga(s) not ended")
    for s in found:
        table.add_row(s["checkout_session_id"], s["status"], s["step"], s["command"],
                      str(s["attempt"]), f"{s['age_seconds']:.0f}s", "; ".join(s["why"]) or "-")
    console.print(table)


def _admin(session_id: str, kind: str, reason: str, operator: str | None, as_json: bool) -> None:
    from saga.admin import UnknownSaga
    from saga.state import OperatorKind

    settings = settings_for_command(db="saga", kafka=True)
    try:
        result = run(_act(settings, session_id, OperatorKind(kind), reason,
                           operator or _default_operator()))
    except UnknownSaga:
        err.print(f"[red]No saga for checkout session {session_id}.[/red]")
        raise typer.Exit(1)
    if as_json:
        print_json(result.as_json())
    elif result.applied:
        console.print(f"{kind} {session_id}: done; the saga is {result.status}"
                      f"{' (stuck)' if result.stuck else ''}\n{result.detail}")
    else:
        err.print(f"[red]{kind} {session_id} refused: {result.detail}[/red]")
    if not result.applied:
        raise typer.Exit(1)


async def _act(settings: Settings, session_id: str, kind: Any, reason: str, operator: str) -> Any:
    """Feed the action through a coordinator, then publish what it wrote to the outbox."""
    from checkout_saga.runtime import machine_config
    from messaging.db import create_pool
    from messaging.kafka import AsyncProducer, producer_config
    from messaging.outbox import OutboxRelay
    from saga.admin import act
    from saga.coordinator import Coordinator, CoordinatorConfig

    pool = await create_pool(settings.dsn_for("saga"), 2)
    producer = AsyncProducer(producer_config(settings))
    try:
        relay = OutboxRelay(pool, "saga", producer)
        config = CoordinatorConfig(machine_config(settings), settings.checkout_hold_ttl_seconds)
        result = await act(Coordinator(pool, relay, config), session_id, kind, reason, operator)
        try:  # the running relays would publish it too; this only saves their poll
            await asyncio.wait_for(relay.publish_once(), 10)
        except Exception as exc:  # noqa: BLE001 - the rows stay in the outbox for the relay
            logging.getLogger(__name__).warning("left to the running relay: %s", exc)
        return result
    finally:
        producer.close()
        await pool.close()


REASON_OPT = typer.Option(..., "--reason", help="Why (written into the saga's log).")


def saga_retry(session_id: str, reason: str = REASON_OPT,
               operator: str | None = OPERATOR_OPT, as_json: bool = JSON_OPT) -> None:
    """Send the saga's command in flight again (and unstick a dead-lettered compensation)."""
    _admin(session_id, "retry", reason, operator, as_json)


def saga_compensate(session_id: str, reason: str = REASON_OPT,
                    operator: str | None = OPERATOR_OPT, as_json: bool = JSON_OPT) -> None:
    """Give the checkout up (before the pivot) and undo what it did: CheckoutFailed CANCELLED."""
    _admin(session_id, "compensate", reason, operator, as_json)


def saga_skip_step(session_id: str, reason: str = REASON_OPT,
                   operator: str | None = OPERATOR_OPT, as_json: bool = JSON_OPT) -> None:
    """Treat the step in flight as done (it was fixed by hand) and go on."""
    _admin(session_id, "skip-step", reason, operator, as_json)


# ---- supervisor and chaos ---------------------------------------------------------------


def supervise_cmd(
    per_role: int = typer.Option(1, "--per-role", min=1, help="Processes per role."),
    role: list[str] | None = typer.Option(None, "--role", help="Roles to run (repeatable)."),
) -> None:
    """Run N worker processes of each role; restart any that dies."""
    run_supervised(per_role, role)


def run_supervised(per_role: int, roles: list[str] | None) -> None:
    from checkout_saga import bootstrap
    from checkout_saga.ops.supervisor import Supervisor, settings_env
    from checkout_saga.runtime import ROLES, prepare

    chosen = list(roles or ROLES)
    unknown = sorted(set(chosen) - set(ROLES))
    if unknown:
        err.print(f"[red]Unknown role(s) {', '.join(unknown)}; choose from {', '.join(ROLES)}.[/red]")
        raise typer.Exit(2)
    settings = bootstrap.operator_settings()
    setup_logging(settings)
    with bootstrap.serving_stack(settings, err.print) as (settings, stack):
        run(prepare(settings))
        env = dict(os.environ)
        env.update(settings_env(settings.kafka, settings.database_url or "", settings.redis_url or "",
                                stack.client_settings))
        supervisor = Supervisor(chosen, per_role, env, settings.checkout_data_dir / "workers")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        err.print(f"supervising {per_role} process(es) of {', '.join(chosen)}")
        supervisor.run(stop)


def chaos_cmd(
    checkouts: int = typer.Option(2000, "--checkouts", min=1),
    kills: int = typer.Option(20, "--kills", min=0, help="Workers SIGKILLed at random moments."),
    per_role: int = typer.Option(2, "--per-role", min=1),
    postgres_restarts: int = typer.Option(2, "--postgres-restarts", min=0),
    redis_restarts: int = typer.Option(2, "--redis-restarts", min=0),
    duration: float = typer.Option(60.0, "--duration", min=1, help="Seconds the storm lasts."),
    seed: int = typer.Option(7, "--seed"),
    brokers: int = typer.Option(1, "--brokers", min=1, max=3,
                                help="Apache Kafka nodes: 1, or 3 (replication 3, 2 in sync)."),
    broker_kills: int = typer.Option(0, "--broker-kills", min=0,
                                     help="Cluster nodes SIGKILLed mid-storm (each started again "
                                          "3 s later); needs --brokers 3."),
    broker_restarts: int = typer.Option(0, "--broker-restarts", min=0,
                                        help="Times the broker is stopped and started mid-storm."),
    keep: bool = typer.Option(False, "--keep", help="Keep the work folder (worker logs)."),
    as_json: bool = JSON_OPT,
) -> None:
    """A storm of checkouts on a stack of its own while workers are killed and servers restarted."""
    from checkout_saga.ops.chaos import ChaosPlan, check_plan, run_chaos

    settings = Settings()
    setup_logging(settings.model_copy(update={"checkout_log_level": "ERROR"}))
    plan = ChaosPlan(checkouts=checkouts, kills=kills, per_role=per_role,
                     postgres_restarts=postgres_restarts, redis_restarts=redis_restarts,
                     duration=duration, seed=seed, result_timeout=max(120.0, duration * 2),
                     brokers=brokers, broker_kills=broker_kills, broker_restarts=broker_restarts)
    try:
        check_plan(plan)
    except ValueError as exc:
        raise OperatorInputError(str(exc)) from None
    settings.checkout_data_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="chaos-", dir=settings.checkout_data_dir))
    base = {k: v for k, v in os.environ.items()
            if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "REDIS_URL")}
    report = run_chaos(workdir, plan, base, on_progress=None if as_json else err.print)
    if not keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        print_json(report.as_json())
    else:
        table = Table("figure", "value", title=f"chaos: {checkouts} checkouts in {report.seconds}s")
        for name in ("checkouts", "results", "missing", "kills", "restarts", "postgres_restarts",
                     "redis_restarts", "broker_kills", "broker_restarts", "goodput",
                     "wrong_outcomes", "breaches"):
            table.add_row(name, str(getattr(report, name)))
        for outcome, count in report.outcomes.items():
            table.add_row(f"outcome {outcome}", str(count))
        console.print(table)
        for line in report.events:
            console.print(f"  {line}")
        for w in report.wrong[:20]:
            console.print(f"[red]wrong outcome[/red] {w}")
        for c in report.verify.get("checks", []):
            if c["status"] not in ("ok", "skipped"):
                console.print(f"[red]{c['name']}[/red]: {c['count']} {c['breaches'][:3]} {c['note']}")
        console.print("[green]every saga ended and every guarantee held[/green]" if report.ok
                      else "[red]the guarantees did NOT hold[/red]")
    if not report.ok:
        raise typer.Exit(1)


# ---- registration -------------------------------------------------------------------------


def register(app: typer.Typer, saga_app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
    app.command("replay")(replay_cmd)
    app.add_typer(dlq_app, name="dlq")
    app.command("supervise")(supervise_cmd)
    app.command("chaos")(chaos_cmd)
    saga_app.command("list")(saga_list)
    saga_app.command("retry")(saga_retry)
    saga_app.command("compensate")(saga_compensate)
    saga_app.command("skip-step")(saga_skip_step)
