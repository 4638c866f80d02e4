"""The CSV of ``checkout-saga stock import``: columns sku, price, quantity.

Written by people (and spreadsheets), so the header is matched without
regard to case or surrounding spaces, a UTF-8 byte-order mark is dropped,
and a bad row is named by its line, its column and what was expected.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

from messaging.errors import OperatorInputError

COLUMNS = ("sku", "price", "quantity")
EXPECTED = {
    "sku": "a product code",
    "price": "a whole number of cents, 0 or more",
    "quantity": "a whole number of units, 0 or more",
}


@dataclass(frozen=True)
class StockRow:
    sku: str
    price: int
    quantity: int


def parse(lines: Iterable[str], name: str) -> list[StockRow]:
    """Every row, or OperatorInputError at the first bad one (nothing is
    imported then). ``name`` is how the operator knows the file."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise OperatorInputError(f"{name} is empty; the first line must be {','.join(COLUMNS)}")
    where = _columns(header, name)
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue  # a blank line, often the last one
        rows.append(_row(values, where, f"{name}:{reader.line_num}"))
    return rows


def _columns(header: list[str], name: str) -> dict[str, int]:
    names = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise OperatorInputError(
            f"{name}:1: no column {', '.join(missing)} in the header "
            f"({','.join(h.strip() for h in header)}); it must name {','.join(COLUMNS)}")
    return {c: names.index(c) for c in COLUMNS}


def _row(values: list[str], where: dict[str, int], at: str) -> StockRow:
    cells = {}
    for column, index in where.items():
        cell = values[index].strip() if index < len(values) else ""
        if column == "sku":
            ok = bool(cell)
        else:
            ok = cell.isascii() and cell.isdigit()
        if not ok:
            shown = repr(cell) if cell else "nothing"
            raise OperatorInputError(
                f"{at}: column {column} has {shown}; expected {EXPECTED[column]}. "
                "Nothing was imported.")
        cells[column] = cell
    return StockRow(cells["sku"], int(cells["price"]), int(cells["quantity"]))
