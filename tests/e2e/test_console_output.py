"""What the operator reads: help in a deliberate order, tables that fit 80
columns without cutting a name, and cells in words (yes/no, "-")."""

from __future__ import annotations

import re

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
