"""`saga graph`: the definition as a Mermaid flowchart, an instance's progress marked."""

from __future__ import annotations

import re

from saga.definition import CHECKOUT_V1, CHECKOUT_V2, OnTimeout, SagaDefinition, Step
from saga.graph import Progress, mermaid, progress_from_log

EDGE = re.compile(r"^\s+(\w+) (-->|-\. .+? \.->|-\.->) (\w+)$")
NODE = re.compile(r"^\s+(\w+)[\[(>]")


def edges(text: str) -> list[tuple[str, str, str]]:
    out = []
    for line in text.splitlines():
        m = EDGE.match(line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


def declared(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if (m := NODE.match(line)) and "-" not in line}


def classes(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"^\s+class ([\w,]+) (\w+)$", line)
        if m:
            out.setdefault(m.group(2), set()).update(m.group(1).split(","))
    return out


def log(*entries: str) -> list[dict[str, str]]:
    return [dict(zip(("step", "kind"), e.split(":"))) for e in entries]


def test_every_edge_joins_declared_nodes_and_the_forward_path_is_the_definition() -> None:
    text = mermaid(CHECKOUT_V1)
    assert text.startswith("flowchart LR\n")
    nodes = declared(text)
    for src, _, dst in edges(text):
        assert src in nodes and dst in nodes, (src, dst)
    forward = [(s, d) for s, kind, d in edges(text) if kind == "-->"]
    names = [s.name for s in CHECKOUT_V1.steps]
    assert forward == list(zip(["start", *names], [*names, "SUCCEEDED"]))


def test_failures_undo_completed_steps_newest_first_and_the_pivot_only_goes_forward() -> None:
    text = mermaid(CHECKOUT_V1)
    dashed = {(s, kind, d) for s, kind, d in edges(text) if kind != "-->"}
    assert ("reserve_stock", "-. fails .->", "FAILED") in dashed
    assert ("create_order", "-. fails .->", "undo_reserve_stock") in dashed
    assert ("authorize_payment", "-. fails .->", "undo_create_order") in dashed
    # A payment that times out may have happened: it is voided too.
    assert ("authorize_payment", "-. times out .->", "undo_authorize_payment") in dashed
    assert ("commit_stock", "-. fails .->", "undo_authorize_payment") in dashed  # the pivot itself
    chain = [(s, d) for s, kind, d in edges(text) if kind == "-.->"]
    assert chain == [("undo_authorize_payment", "undo_create_order"),
                     ("undo_create_order", "undo_reserve_stock"), ("undo_reserve_stock", "FAILED")]
    for step in ("capture_payment", "confirm_order"):  # after the pivot: retried, never undone
        assert (step, "-. fails: retry .->", step) in dashed
        assert f"undo_{step}" not in declared(text)
    assert classes(text)["pivot"] == {"commit_stock"}


def test_a_conditional_step_can_be_skipped() -> None:
    text = mermaid(CHECKOUT_V2)
    assert ("start", "-. no promo_code .->", "reserve_stock") in edges(text)
    assert ("reserve_stock", "-. fails .->", "undo_apply_promo") in edges(text)
    assert "if it ran" in text


def test_a_custom_definition_is_drawn_from_its_data() -> None:
    definition = SagaDefinition("tiny", 7, (
        Step("a", "svc", "DoA", "UndoA"),
        Step("b", "svc", "DoB", on_timeout=OnTimeout.FAIL, timeout_reason="B_TIMEOUT"),
    ))
    text = mermaid(definition)
    assert "tiny saga, definition v7" in text
    assert ("b", "-. times out .->", "undo_a") in edges(text)  # b has nothing to undo itself
    assert "pivot" not in classes(text)


def test_progress_of_a_succeeded_saga() -> None:
    entries = ["-:started"]
    for step in (s.name for s in CHECKOUT_V2.steps[1:]):
        entries += [f"{step}:command", f"{step}:succeeded"]
    progress = progress_from_log("cs-1", "SUCCEEDED", log(*entries, "-:succeeded"))
    marks = classes(mermaid(CHECKOUT_V2, progress))
    assert marks["done"] == {s.name for s in CHECKOUT_V2.steps[1:]}
    assert marks["skipped"] == {"apply_promo"}
    assert marks["reached"] == {"start", "SUCCEEDED"}
    assert "session cs-1: SUCCEEDED" in mermaid(CHECKOUT_V2, progress)


def test_progress_of_a_saga_compensating_after_a_payment_timeout() -> None:
    progress = progress_from_log("cs-2", "COMPENSATING", log(
        "-:started", "reserve_stock:command", "reserve_stock:succeeded",
        "create_order:command", "create_order:succeeded",
        "authorize_payment:command", "authorize_payment:timeout", "-:compensating",
        "authorize_payment:command", "authorize_payment:compensated",
        "create_order:command", "create_order:failed", "create_order:timeout",
    ))
    assert progress == Progress(
        "cs-2", "COMPENSATING",
        {"reserve_stock": "done", "create_order": "done", "authorize_payment": "timeout"},
        {"authorize_payment": "compensated", "create_order": "undoing"},
    )
    marks = classes(mermaid(CHECKOUT_V1, progress))
    assert marks["undoing"] == {"undo_create_order"} and marks["compensated"] == {"undo_authorize_payment"}
    assert marks["reached"] == {"start"}  # not finished


def test_progress_of_a_stuck_saga_and_a_plain_failure() -> None:
    stuck = progress_from_log("cs-3", "COMPENSATING", log(
        "-:started", "reserve_stock:command", "reserve_stock:succeeded", "create_order:command",
        "create_order:failed", "-:compensating", "reserve_stock:command",
        "reserve_stock:timeout", "reserve_stock:dead-letter",
    ))
    assert stuck.steps == {"reserve_stock": "done", "create_order": "failed"}
    assert stuck.undo == {"reserve_stock": "stuck"}
    failed = progress_from_log("cs-4", "FAILED", log(
        "-:started", "reserve_stock:command", "reserve_stock:failed", "-:failed"))
    marks = classes(mermaid(CHECKOUT_V1, failed))
    assert marks["failed"] == {"reserve_stock"} and marks["reached"] == {"start", "FAILED"}
