"""The checked-in JSON Schemas in schemas/json/ must match the models."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.contract import EVENT_MODELS
from schemas.export import DEFAULT_DIR, export_json_schemas, stale_schemas


def test_checked_in_schemas_are_current() -> None:
    stale = stale_schemas(DEFAULT_DIR)
    assert not stale, (
        f"JSON Schemas in {DEFAULT_DIR} are out of date ({', '.join(stale)}); "
        "run `python -m schemas.export` and commit the result"
    )


def test_export_writes_one_file_per_event_type(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{t}.schema.json" for t in EVENT_MODELS)
    assert stale_schemas(tmp_path) == []


def test_export_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in export_json_schemas(tmp_path / "b")}
    assert first == second
    assert all(text.endswith(b"}\n") for text in first.values())


def test_edited_or_missing_files_are_stale(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    (tmp_path / "CheckoutFailed.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "OrderShipped.schema.json").unlink()
    assert stale_schemas(tmp_path) == ["CheckoutFailed.schema.json", "OrderShipped.schema.json"]
    export_json_schemas(tmp_path)
    assert stale_schemas(tmp_path) == []


def test_schema_describes_the_whole_event() -> None:
    schema = json.loads((DEFAULT_DIR / "CheckoutRequested.schema.json").read_text("utf-8"))
    properties = schema["properties"]
    assert properties["type"]["const"] == "CheckoutRequested"
    assert properties["specversion"]["const"] == "1.0"
    assert properties["data"] == {"$ref": "#/$defs/CheckoutRequested"}
    assert set(schema["required"]) >= {"specversion", "id", "source", "type", "time", "data"}
    item = schema["$defs"]["LineItem"]["properties"]
    assert item["quantity"] == {"maximum": 1000, "minimum": 1, "title": "Quantity",
                                "type": "integer"}  # fmt: skip
    assert item["unit_price"]["type"] == "integer"


def test_status_change_schema_uses_the_wire_name() -> None:
    schema = json.loads((DEFAULT_DIR / "OrderStatusChanged.schema.json").read_text("utf-8"))
    assert "from" in schema["$defs"]["OrderStatusChanged"]["properties"]
