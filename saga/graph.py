"""A saga definition as a Mermaid flowchart, with one instance's progress
marked (``checkout-saga saga graph [SESSION_ID]``). Pure: it reads a
``SagaDefinition`` and, for an instance, the step log that ``saga show``
prints.

The drawing follows the machine's rules (``saga.machine``): stages run in
order, the steps of a stage side by side (a step with ``only_if`` can be
skipped); a step up to and including
the pivot that fails starts the compensations of the steps completed before
it, newest first (a step that fails on timeout is undone too, since it may
have happened); after the pivot a step only goes forward, retrying.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from saga.definition import OnTimeout, SagaDefinition

# Marks for the nodes of one instance, and how each is drawn.
STYLES: dict[str, str] = {
    "done": "fill:#d4f4dd,stroke:#2e9d57,color:#14331f",
    "active": "fill:#dbe8ff,stroke:#3a6fd8,stroke-width:3px,color:#10244d",
    "failed": "fill:#fbd5d5,stroke:#d64545,color:#4d1010",
    "timeout": "fill:#ffe8c2,stroke:#e0a100,color:#4d3600",
    "undoing": "fill:#f3e1ff,stroke:#8a3fd1,stroke-width:3px,color:#2d1045",
    "compensated": "fill:#cdb4e6,stroke:#5b2391,color:#2d1045",
    "stuck": "fill:#d64545,stroke:#7a1010,color:#ffffff",
    "skipped": "fill:#f2f2f2,stroke:#aaaaaa,color:#777777,stroke-dasharray:4 3",
    "reached": "fill:#1d2430,stroke:#1d2430,color:#ffffff",
}


@dataclass(frozen=True)
class Progress:
    """Where one instance is: a mark per step node and per undo node."""

    session_id: str
    status: str
    steps: Mapping[str, str] = field(default_factory=dict)
    undo: Mapping[str, str] = field(default_factory=dict)


_FORWARD = {"command": "active", "succeeded": "done", "failed": "failed", "timeout": "timeout",
            "gave-up": "failed"}
_BACKWARD = {"command": "undoing", "failed": "undoing", "timeout": "undoing",
             "compensated": "compensated", "dead-letter": "stuck"}


def progress_from_log(session_id: str, status: str, log: Iterable[Mapping[str, str]]) -> Progress:
    """Read an instance's progress from its step log (entries with ``step``
    and ``kind``, oldest first): the last thing that happened to a step wins.
    After the saga's ``compensating`` entry, a step's entries are about its
    compensation."""
    steps: dict[str, str] = {}
    undo: dict[str, str] = {}
    compensating = False
    for entry in log:
        step, kind = entry["step"], entry["kind"]
        if step == "-":
            compensating = compensating or kind == "compensating"
        elif compensating and kind in _BACKWARD and undo.get(step) != "compensated":
            undo[step] = _BACKWARD[kind]
        elif not compensating and kind in _FORWARD:
            steps[step] = _FORWARD[kind]
    return Progress(session_id, status, steps, undo)


def _node_id(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _label(*lines: str) -> str:
    return '"' + "<br/>".join(line.replace('"', "'") for line in lines) + '"'


def mermaid(definition: SagaDefinition, progress: Progress | None = None) -> str:
    steps = definition.steps
    pivot = definition.pivot_index
    out = ["flowchart LR"]
    title = f"{definition.name} saga, definition v{definition.version}"
    if progress is not None:
        title += f"; session {progress.session_id}: {progress.status}"
    out.append(f"    %% {title}")
    out.append("    start((start))")
    out.append("    SUCCEEDED(((SUCCEEDED)))")
    out.append("    FAILED(((FAILED)))")
    for i, step in enumerate(steps):
        extra = []
        if step.pivot:
            extra.append("pivot: forward only from here")
        if step.only_if:
            extra.append(f"only if {step.only_if}")
        if step.on_timeout is OnTimeout.FAIL:
            extra.append(f"timeout: {step.timeout_reason or 'fail'}")
        if step.alongside:
            extra.append(f"alongside {steps[i - 1].name}")
        shape = ("[[", "]]") if step.pivot else ("[", "]")
        out.append(f"    {_node_id(step.name)}{shape[0]}"
                   f"{_label(step.name, f'{step.service}: {step.action}', *extra)}{shape[1]}")
    undoable = [s for i, s in enumerate(steps) if s.compensation and i <= pivot]
    for step in undoable:
        lines = [f"undo {step.name}", f"{step.service}: {step.compensation}"]
        if step.only_if:
            lines.append("if it ran")
        out.append(f"    undo_{_node_id(step.name)}>{_label(*lines)}]")

    # Forward: each stage to the next (the steps of a stage side by side);
    # a conditional step can be skipped.
    prev = ["start"]
    i = 0
    while i < len(steps):
        stage = [steps[j] for j in definition.stage(i)]
        for step in stage:
            out.extend(f"    {p} --> {_node_id(step.name)}" for p in prev)
        after = definition.stage(i)[-1] + 1
        for step in stage:
            if step.only_if:
                nxt = _node_id(steps[after].name) if after < len(steps) else "SUCCEEDED"
                out.extend(f"    {p} -. no {step.only_if} .-> {nxt}" for p in prev)
        prev = [_node_id(s.name) for s in stage]
        i = after
    out.extend(f"    {p} --> SUCCEEDED" for p in prev)

    # Backward: a failure undoes the completed steps, newest first.
    def undo_before(index: int) -> str:
        earlier = [s for s in undoable if definition.index_of(s.name) < index]
        return f"undo_{_node_id(earlier[-1].name)}" if earlier else "FAILED"

    for i, step in enumerate(steps):
        node = _node_id(step.name)
        if i <= pivot:
            out.append(f"    {node} -. fails .-> {undo_before(i)}")
            if step.on_timeout is OnTimeout.FAIL:
                target = f"undo_{node}" if step.compensation else undo_before(i)
                out.append(f"    {node} -. times out .-> {target}")
        else:
            out.append(f"    {node} -. fails: retry .-> {node}")
    for step in reversed(undoable):
        out.append(f"    undo_{_node_id(step.name)} -.-> {undo_before(definition.index_of(step.name))}")

    out.append("    classDef pivot stroke-width:3px")
    if pivot < len(steps):
        out.append(f"    class {_node_id(steps[pivot].name)} pivot")
    if progress is not None:
        out.extend(_marks(definition, progress))
    return "\n".join(out) + "\n"


def _marks(definition: SagaDefinition, progress: Progress) -> list[str]:
    by_mark: dict[str, list[str]] = {}
    for i, step in enumerate(definition.steps):
        mark = progress.steps.get(step.name)
        later = any(s.name in progress.steps for s in definition.steps[i + 1:])
        if mark is None and step.only_if and (later or progress.status == "SUCCEEDED"):
            mark = "skipped"
        if mark:
            by_mark.setdefault(mark, []).append(_node_id(step.name))
        undo = progress.undo.get(step.name)
        if undo:
            by_mark.setdefault(undo, []).append(f"undo_{_node_id(step.name)}")
    if progress.status in ("SUCCEEDED", "FAILED"):
        by_mark.setdefault("reached", []).append(progress.status)
    by_mark.setdefault("reached", []).insert(0, "start")
    lines = []
    for mark, nodes in by_mark.items():
        lines.append(f"    classDef {mark} {STYLES[mark]}")
        lines.append(f"    class {','.join(nodes)} {mark}")
    return lines
