"""Pure cart-validation rules: what a cart may hold, given the catalogue."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    skus: list[str]


def check_cart(lines: Sequence[Line], prices: Mapping[str, int]) -> Rejection | None:
    """Unknown SKUs first, then prices that differ from what the customer saw."""
    unknown = sorted(line.sku for line in lines if line.sku not in prices)
    if unknown:
        return Rejection(
            "UNKNOWN_SKU", f"These items do not exist: {', '.join(unknown)}.", unknown
        )
    changed = sorted(line.sku for line in lines if prices[line.sku] != line.unit_price)
    if changed:
        parts = [
            f"{line.sku} now costs {prices[line.sku]} (shown {line.unit_price})"
            for line in sorted(lines, key=lambda l: l.sku)
            if line.sku in changed
        ]
        return Rejection("PRICE_CHANGED", "The price changed: " + "; ".join(parts) + ".", changed)
    return None


def out_of_stock(lines: Sequence[Line], available: Mapping[str, int]) -> Rejection:
    short = sorted(line.sku for line in lines if available.get(line.sku, 0) < line.quantity)
    if not short:
        # Stock came back between the failed reserve and this read: the
        # reserve still lost the race, so name every line.
        skus = sorted(line.sku for line in lines)
        return Rejection("OUT_OF_STOCK", f"Not enough stock for {', '.join(skus)} just now.", skus)
    parts = [
        f"{line.sku} (wanted {line.quantity}, {available.get(line.sku, 0)} left)"
        for line in sorted(lines, key=lambda l: l.sku)
        if line.sku in short
    ]
    return Rejection("OUT_OF_STOCK", "Not enough stock: " + ", ".join(parts) + ".", short)


def in_sku_order(lines: Sequence[Line]) -> list[Line]:
    """Rows are always touched in SKU order so two carts never deadlock."""
    return sorted(lines, key=lambda line: line.sku)
