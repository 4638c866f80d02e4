"""Cart validation rules: which rejection wins, what it names, and the order
rows are touched in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inventory.rules import Line, Rejection, check_cart, in_sku_order, out_of_stock

PRICES = {"A": 100, "B": 250, "C": 999, "D": 5}


def test_a_cart_at_catalogue_prices_passes() -> None:
    lines = [Line("B", 3, 250), Line("A", 1, 100)]
    assert check_cart(lines, PRICES) is None


def test_an_empty_cart_has_nothing_to_reject() -> None:
    assert check_cart([], PRICES) is None


def test_unknown_skus_are_listed_sorted() -> None:
    lines = [Line("Z", 1, 1), Line("A", 1, 100), Line("X", 2, 5)]
    rejection = check_cart(lines, PRICES)
    assert rejection == Rejection("UNKNOWN_SKU", "These items do not exist: X, Z.", ["X", "Z"])


def test_an_unknown_sku_wins_over_a_changed_price() -> None:
    lines = [Line("A", 1, 99), Line("Q", 1, 10), Line("B", 1, 1)]
    rejection = check_cart(lines, PRICES)
    assert rejection is not None
    assert rejection.reason == "UNKNOWN_SKU" and rejection.skus == ["Q"]


def test_changed_prices_are_named_with_old_and_new_price() -> None:
    lines = [Line("C", 1, 1000), Line("A", 2, 100), Line("B", 1, 200)]
    rejection = check_cart(lines, PRICES)
    assert rejection == Rejection(
        "PRICE_CHANGED",
        "The price changed: B now costs 250 (shown 200); C now costs 999 (shown 1000).",
        ["B", "C"],
    )


@pytest.mark.parametrize("shown", [0, 99, 101])
def test_any_price_difference_counts_up_or_down(shown: int) -> None:
    rejection = check_cart([Line("A", 1, shown)], PRICES)
    assert rejection is not None and rejection.reason == "PRICE_CHANGED"


def test_a_free_item_is_still_checked_against_its_price() -> None:
    assert check_cart([Line("F", 1, 0)], {"F": 0}) is None
    rejection = check_cart([Line("F", 1, 0)], {"F": 1})
    assert rejection is not None and rejection.skus == ["F"]


def test_out_of_stock_lists_every_short_sku_sorted() -> None:
    lines = [Line("C", 5, 999), Line("A", 1, 100), Line("B", 3, 250), Line("D", 2, 5)]
    available = {"A": 1, "B": 2, "C": 0}  # D: no row at all counts as nothing left
    rejection = out_of_stock(lines, available)
    assert rejection == Rejection(
        "OUT_OF_STOCK",
        "Not enough stock: B (wanted 3, 2 left), C (wanted 5, 0 left), D (wanted 2, 0 left).",
        ["B", "C", "D"],
    )


def test_exactly_the_available_quantity_is_not_short() -> None:
    rejection = out_of_stock([Line("A", 4, 100), Line("B", 5, 250)], {"A": 4, "B": 4})
    assert rejection.skus == ["B"]


def test_in_sku_order_sorts_by_sku_and_keeps_every_line() -> None:
    lines = [Line("b", 1, 1), Line("B", 2, 2), Line("a-10", 3, 3), Line("a-9", 4, 4)]
    assert [line.sku for line in in_sku_order(lines)] == ["B", "a-10", "a-9", "b"]
    assert sorted(in_sku_order(lines), key=id) == sorted(lines, key=id)


skus = st.text(alphabet="ABCDEFGH-1", min_size=1, max_size=4)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(skus, st.tuples(st.integers(1, 1000), st.integers(0, 1000)), max_size=8),
       st.permutations(range(8)))
def test_two_carts_touch_rows_in_one_global_order(
    cart: dict[str, tuple[int, int]], shuffle: list[int]
) -> None:
    # Two carts over the same SKUs, listed in different orders, lock rows in the
    # same order: the property that keeps two reservations from deadlocking.
    lines = [Line(sku, q, 1) for sku, (q, _) in cart.items()]
    other = [lines[i] for i in shuffle if i < len(lines)]
    assert [l.sku for l in in_sku_order(lines)] == [l.sku for l in in_sku_order(other)]
    # And out_of_stock names exactly the lines that want more than is left
    # (or, when stock came back after the failed reserve, every line).
    available = {sku: left for sku, (_, left) in cart.items()}
    short = out_of_stock(lines, available).skus
    expected = sorted(sku for sku, (q, left) in cart.items() if q > left)
    assert short == (expected or sorted(cart))
