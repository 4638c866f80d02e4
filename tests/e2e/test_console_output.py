"""What the operator reads: help in a deliberate order, tables that fit 80
columns without cutting a name, and cells in words (yes/no, "-")."""

from __future__ import annotations

import json
import re

from helpers import uid
from ops_helpers import invoke

from checkout_saga.cli_console import ORDER

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
