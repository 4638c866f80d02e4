"""What the operator reads: help in a deliberate order, tables that fit 80
columns without cutting a name, and cells in words (yes/no, "-")."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import cli, cli_json, uid
from ops_helpers import invoke

from checkout_saga.cli.console import ORDER
from messaging.topics import all_topics

WIDE_HELP = {"COLUMNS": "100"}


def test_help_lists_commands_in_the_operators_order_without_type_names(env) -> None:
    shown = invoke({**env, **WIDE_HELP}, "--help").stdout
    listed = re.findall(r"^│ ([a-z]+) ", shown, flags=re.MULTILINE)
    assert listed == list(ORDER), listed
    for panel in ("Run", "Day to day", "Incidents", "Measure"):
        assert f"─ {panel} ─" in shown
    for args in (["stock", "import"], ["stock", "hot"], ["dlq", "redrive"], ["analytics"],
                 ["bench"], ["saga", "list"]):
        page = invoke({**env, **WIDE_HELP}, *args, "--help").stdout
        assert not re.search(r"<[a-z\[\]|, ]+>", page), page  # <bool>, <int>, <list[int]>
    assert "--port" in invoke(env, "analytics", "--help").stdout


def test_stock_show_says_yes_no_and_dash_and_stock_list_pages(env) -> None:
    prefix = f"LIST-{uid('p')}"
    skus = [f"{prefix}-{n}" for n in range(3)]
    for sku in skus:
        invoke(env, "stock", "set", sku, "--price", "100", "--quantity", "2")
    shown = invoke(env, "stock", "show", skus[0]).stdout
    assert re.search(r"│ no\s+│ -\s+│", shown), shown  # hot, redis_available
    assert "False" not in shown and "None" not in shown
    first = json.loads(invoke(env, "stock", "list", "--after", f"{prefix}-", "--limit", "2",
                              "--json").stdout)
    assert [r["sku"] for r in first["skus"]] == skus[:2] and first["next_after"] == skus[1]
    rest = json.loads(invoke(env, "stock", "list", "--after", skus[1], "--limit", "2",
                             "--json").stdout)
    assert rest["skus"][0]["sku"] == skus[2] and rest["skus"][0]["hot"] is False
    table = invoke(env, "stock", "list", "--after", f"{prefix}-", "--limit", "2").stdout
    assert f"next page: checkout-saga stock list --after {skus[1]}" in table
    assert skus[0] in table and skus[2] not in table


NARROW = {"COLUMNS": "80"}


def test_topic_tables_fit_80_columns_with_every_name_whole(env) -> None:
    topics = all_topics()
    for args in (["topics", "create"], ["topics", "list"]):
        shown = cli({**env, **NARROW}, *args).stdout
        assert max(len(line) for line in shown.splitlines()) <= 80, shown
        words = set(shown.split())
        assert not [t for t in topics if t not in words], shown
        assert "…" not in shown
    listed = cli_json(env, "topics", "list")
    assert [t["name"] for t in listed] == list(topics)
    assert all(t["exists"] and t["partitions"] == t["planned_partitions"] == 2 for t in listed)


def test_bench_tables_fit_80_columns(env, tmp_path: Path) -> None:
    run = {"workers": 1, "completed": 2708, "throughput_per_s": 270.8,
           "latency_ms": {"p50": 41.5, "p95": 120.25, "p99": 310.5, "max": 1022.0},
           "vs_baseline": {"throughput_ratio": 0.412, "p99_ratio": 97.1},
           "steps_ms": {"reserve_stock": {"p50": 3.1, "p95": 9.9, "p99": 20.4}},
           "outcomes": {"CheckoutSucceeded": 2600, "OUT_OF_STOCK": 108},
           "guarantees": {"oversold_skus": 0, "ok": True}, "per_5s_window": [270, 271]}
    report = {"partitions": 4, "processes_per_worker": [["coordinator", "timers"]],
              "baseline": {"postgres_checkout_equivalents_per_s": 657.3,
                           "kafka_round_trip_ms": {"p50": 3.2, "p99": 3.2}},
              "runs": [run, {**run, "workers": 2}, {**run, "workers": 4}]}
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(report))
    shown = cli({**env, **NARROW}, "bench", "show", str(saved)).stdout
    table = shown.split("per step")[0]
    assert "…" not in shown and "4 worker(s)" in table and "2708" in table, shown
    assert "checkouts" in table and "reserve_stock" in shown
    saved.write_text("{}")
    refused = cli(env, "bench", "show", str(saved), check=False)
    assert refused.returncode == 2 and "is not a report" in refused.stderr
