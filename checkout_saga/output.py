"""What a command prints for scripts (``--json``), one way everywhere: indented JSON
on stdout, times and other values as their text."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")
