"""Modules that build or classify messages load no driver (issue 15), and
every exception class of the project derives from the tree in errors.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("checkout_saga", "saga", "services", "analytics", "schemas")

DRIVERS = ("asyncpg", "redis", "confluent_kafka")
# Not errors but signals caught a few lines away, and schemas (the bottom
# layer, which imports nothing of the project) with its own InvalidEvent.
NOT_IN_THE_TREE = frozenset({"Skip", "_Short", "InvalidEvent", "_BadJson"})
BUILTIN = frozenset({"Exception", "BaseException", "RuntimeError", "ValueError",
                     "LookupError", "KeyError", "TypeError", "OSError"})


@pytest.mark.parametrize("module", ["messaging.errors", "messaging.message",
                                    "messaging.messages", "saga.outcomes"])
def test_importing_loads_no_driver(module: str) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(' '.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert sorted({name.split(".")[0] for name in loaded} & set(DRIVERS)) == []


def test_every_exception_class_derives_from_the_tree() -> None:
    outside = []
    for path in (p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))):
        module = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name in NOT_IN_THE_TREE:
                continue
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
            if bases & BUILTIN and not bases - BUILTIN and module != "messaging.errors":
                outside.append(f"{module}.{node.name}")
    assert outside == []


def test_a_driver_error_is_classified_once_its_driver_is_loaded() -> None:
    import asyncpg

    from messaging.errors import is_transient

    assert is_transient(asyncpg.SerializationError("could not serialize access"))
    assert is_transient(asyncpg.exceptions.InternalClientError("cannot switch to state 15"))
    assert not is_transient(asyncpg.UniqueViolationError("duplicate key"))
