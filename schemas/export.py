"""JSON Schema files for every external event, for the teams around us.

Each file describes the whole CloudEvent with `type` fixed and `data` typed,
so a producer in another language can validate what it sends.  The files are
generated from the models and checked in; a unit test fails when they drift.

    python -m schemas.export          # rewrite schemas/json/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, create_model

from schemas.contract import EVENT_MODELS, NO_NUL_REGEX
from schemas.envelope import CloudEvent
from schemas.limits import MAX_EVENT_BYTES, MAX_EXTENSION_CHARS

__all__ = ["DEFAULT_DIR", "export_json_schemas", "main", "stale_schemas"]

DEFAULT_DIR: Final = Path(__file__).parent / "json"
_SUFFIX: Final = ".schema.json"
_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write `<out_dir>/<Type>.schema.json` for each event type; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, text in _rendered().items():
        path = out_dir / name
        # Rewriting unchanged files would only churn mtimes and editor buffers.
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def stale_schemas(out_dir: Path) -> list[str]:
    """Names of the schema files in `out_dir` that are missing or out of date."""
    return [
        name
        for name, text in _rendered().items()
        if not (out_dir / name).is_file()
        or (out_dir / name).read_text(encoding="utf-8") != text
    ]


def _rendered() -> dict[str, str]:
    return {
        f"{event_type}{_SUFFIX}": _render(event_schema(event_type, model))
        for event_type, model in sorted(EVENT_MODELS.items())
    }


def _render(schema: dict[str, Any]) -> str:
    # Sorted keys and a fixed indent so the checked-in files diff cleanly.
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def event_schema(event_type: str, model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of a whole CloudEvent of `event_type` carrying `model`."""
    # Narrowing the envelope in a subclass reuses its rules (time format,
    # extension values) instead of restating them by hand.
    # Any: the Literal is built at run time, which a type checker cannot follow.
    fixed_type: Any = Literal[event_type]
    envelope: type[BaseModel] = create_model(
        f"{event_type}Event",
        __base__=CloudEvent,
        type=(fixed_type, ...),
        data=(model, ...),
    )
    schema = envelope.model_json_schema(mode="validation")
    schema["$schema"] = _DIALECT
    schema["title"] = event_type
    # JSON Schema cannot weigh the encoded bytes: the limit is stated instead.
    schema["description"] = (
        f"A CloudEvents 1.0 event (structured JSON mode) of type {event_type}, "
        f"at most {MAX_EVENT_BYTES:,} bytes of UTF-8 JSON."
    )
    # Extension attributes follow the CloudEvents naming and value rules; the
    # core attribute names satisfy the same pattern. String keywords apply to
    # string values only.
    schema["propertyNames"] = {"pattern": "^[a-z0-9]+$"}
    schema["additionalProperties"] = {
        "type": ["string", "integer", "boolean", "null"],
        "maxLength": MAX_EXTENSION_CHARS,
        "pattern": NO_NUL_REGEX,
    }
    return schema


def main() -> None:
    paths = export_json_schemas(DEFAULT_DIR)
    sys.stdout.write(f"{len(paths)} schema files up to date in {DEFAULT_DIR}\n")


if __name__ == "__main__":
    main()
