"""The pure promo-code rules: validity, applicability and integer-cent discounts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.limits import MAX_AMOUNT
from services.promotions.rules import (
    CartLine,
    Invalid,
    Priced,
    Promo,
    definition_errors,
    normalize_code,
    price,
    remaining,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CART = [CartLine("SKU-A", 2, 1999), CartLine("SKU-B", 1, 500)]  # subtotal 4498


def priced(promo: Promo | None, lines: list[CartLine] = CART, code: str = "BF10") -> Priced:
    result = price(promo, code, lines, NOW)
    assert isinstance(result, Priced), result
    return result


def invalid(promo: Promo | None, lines: list[CartLine] = CART, code: str = "BF10") -> Invalid:
    result = price(promo, code, lines, NOW)
    assert isinstance(result, Invalid), result
    assert result.reason == "PROMO_INVALID"
    return result


def test_percent_off_rounds_down_to_whole_cents() -> None:
    result = priced(Promo("BF10", 10, percent_off=10))
    assert (result.subtotal, result.discount, result.total) == (4498, 449, 4049)


def test_amount_off_is_taken_off_the_subtotal() -> None:
    result = priced(Promo("FIVE", 10, amount_off=500))
    assert (result.discount, result.total) == (500, 3998)


def test_amount_off_never_exceeds_the_subtotal() -> None:
    result = priced(Promo("BIG", 10, amount_off=10_000))
    assert (result.discount, result.total) == (4498, 0)


def test_hundred_percent_off_makes_the_cart_free() -> None:
    assert priced(Promo("FREE", 1, percent_off=100)).total == 0


def test_unknown_code_is_invalid_and_named() -> None:
    assert "NOPE" in invalid(None, code="NOPE").detail


def test_expired_code_is_invalid_and_says_when() -> None:
    detail = invalid(Promo("OLD", 10, percent_off=10, expires_at=NOW - timedelta(days=1))).detail
    assert "expired" in detail and "2026-11-26" in detail


def test_expiry_is_exclusive() -> None:
    invalid(Promo("EDGE", 10, percent_off=10, expires_at=NOW))
    priced(Promo("EDGE", 10, percent_off=10, expires_at=NOW + timedelta(seconds=1)))


def test_code_limited_to_other_skus_does_not_apply() -> None:
    detail = invalid(Promo("SHOES", 10, percent_off=10, skus=frozenset({"SKU-Z"}))).detail
    assert "does not apply" in detail and "SKU-Z" in detail


def test_code_limited_to_skus_discounts_only_those_lines() -> None:
    result = priced(Promo("B", 10, percent_off=50, skus=frozenset({"SKU-B"})))
    assert (result.discount, result.total) == (250, 4248)


def test_amount_off_on_limited_skus_is_capped_at_those_lines() -> None:
    result = priced(Promo("B", 10, amount_off=2000, skus=frozenset({"SKU-B"})))
    assert (result.discount, result.total) == (500, 3998)


def test_min_subtotal_not_reached_is_invalid_with_both_numbers() -> None:
    detail = invalid(Promo("MIN", 10, percent_off=10, min_subtotal=5000)).detail
    assert "5000" in detail and "4498" in detail


def test_min_subtotal_reached_exactly_applies() -> None:
    priced(Promo("MIN", 10, percent_off=10, min_subtotal=4498))


def test_codes_are_matched_case_insensitively() -> None:
    assert normalize_code("  bf10 ") == "BF10"


@pytest.mark.parametrize(
    ("promo", "fragment"),
    [
        (Promo("X", 1), "exactly one"),
        (Promo("X", 1, percent_off=10, amount_off=10), "exactly one"),
        (Promo("X", 1, percent_off=0), "between 1 and 100"),
        (Promo("X", 1, percent_off=101), "between 1 and 100"),
        (Promo("X", 1, amount_off=0), "at least 1"),
        (Promo("X", -1, percent_off=10), "max uses"),
        (Promo("X", 1, percent_off=10, min_subtotal=-1), "min subtotal"),
        (Promo("X", 1, percent_off=10, skus=frozenset()), "SKU"),
        (Promo("", 1, percent_off=10), "1-64"),
        (Promo("P" * 65, 1, percent_off=10), "1-64"),
        (Promo("P\x00", 1, percent_off=10), "U+0000"),
        (Promo("X", 1, amount_off=MAX_AMOUNT + 1), f"at most {MAX_AMOUNT}"),
        (Promo("X", MAX_AMOUNT + 1, percent_off=10), "max uses must be at most"),
        (Promo("X", 1, percent_off=10, min_subtotal=MAX_AMOUNT + 1), "min subtotal must be at most"),
        (Promo("X", 1, percent_off=10, skus=frozenset({"S" * 65})), "at most 64"),
        (Promo("X", 1, percent_off=10, skus=frozenset({"S\x00"})), "U+0000"),
        (Promo("X", 1, percent_off=10, expires_at=datetime(2030, 1, 1)), "time zone"),
    ],
)
def test_bad_definitions_are_refused(promo: Promo, fragment: str) -> None:
    assert any(fragment in e for e in definition_errors(promo))


def test_good_definition_passes() -> None:
    assert definition_errors(Promo("BF10", 100, percent_off=10, skus=frozenset({"A"}))) == []


def test_definition_at_the_bigint_edge_passes() -> None:
    edge = Promo("P" * 64, MAX_AMOUNT, amount_off=MAX_AMOUNT, min_subtotal=MAX_AMOUNT,
                 skus=frozenset({"S" * 64}))
    assert definition_errors(edge) == []


def test_remaining_never_negative() -> None:
    assert (remaining(100, 40), remaining(100, 100), remaining(5, 7)) == (60, 0, 0)


lines = st.lists(
    st.builds(CartLine, st.sampled_from(["A", "B", "C", "D"]), st.integers(1, 1000),
              st.integers(0, 1_000_000)),
    min_size=1, max_size=4, unique_by=lambda line: line.sku,
)
promos = st.one_of(
    st.builds(Promo, st.just("P"), st.just(1), percent_off=st.integers(1, 100)),
    st.builds(Promo, st.just("P"), st.just(1), amount_off=st.integers(1, 10**9)),
).flatmap(lambda p: st.builds(
    Promo, st.just("P"), st.just(1), percent_off=st.just(p.percent_off),
    amount_off=st.just(p.amount_off),
    skus=st.one_of(st.none(), st.frozensets(st.sampled_from(["A", "B", "C", "D"]), min_size=1)),
))


@given(promos, lines)
def test_discount_is_whole_cents_within_the_covered_lines(promo: Promo, cart: list[CartLine]) -> None:
    result = price(promo, "P", cart, NOW)
    covered = sum(l.amount for l in cart if promo.skus is None or l.sku in promo.skus)
    if isinstance(result, Invalid):
        assert not any(promo.skus is None or l.sku in promo.skus for l in cart)
        return
    assert isinstance(result.discount, int)
    assert 0 <= result.discount <= covered <= result.subtotal
    assert result.total == result.subtotal - result.discount >= 0
    if promo.percent_off is not None:
        assert result.discount == covered * promo.percent_off // 100


# --- at the edge of a signed 64-bit integer -------------------------------------


def test_percent_off_the_largest_subtotal_fits_and_rounds_down() -> None:
    result = priced(Promo("P", 1, percent_off=99), [CartLine("A", 1, MAX_AMOUNT)])
    assert result.discount == MAX_AMOUNT * 99 // 100 <= MAX_AMOUNT
    assert result.total == MAX_AMOUNT - result.discount


def test_a_subtotal_past_a_bigint_is_never_priced() -> None:
    # The intake refuses such a cart; this is the defence behind it.
    result = price(Promo("P", 1, percent_off=10), "P", [CartLine("A", 3, 10**20)], NOW)
    assert isinstance(result, Invalid) and result.reason == "INVALID_REQUEST"
    assert str(3 * 10**20) in result.detail


@st.composite
def edge_carts(draw: st.DrawFn) -> list[CartLine]:
    """Carts whose subtotal fits a bigint, many of them close to its limit."""
    count = draw(st.integers(1, 4))
    share = MAX_AMOUNT // count
    out = []
    for sku in ["A", "B", "C", "D"][:count]:
        quantity = draw(st.integers(1, 1000))
        top = share // quantity
        out.append(CartLine(sku, quantity, draw(st.one_of(st.just(top), st.integers(0, top)))))
    return out


edge_promos = st.one_of(
    st.builds(Promo, st.just("P"), st.just(1), percent_off=st.integers(1, 100),
              skus=st.one_of(st.none(), st.just(frozenset({"A"})))),
    st.builds(Promo, st.just("P"), st.just(1),
              amount_off=st.one_of(st.just(MAX_AMOUNT), st.integers(1, MAX_AMOUNT)),
              skus=st.one_of(st.none(), st.just(frozenset({"A"})))),
)


@given(edge_promos, edge_carts())
def test_discount_and_total_fit_a_bigint_and_never_exceed_the_subtotal(
    promo: Promo, cart: list[CartLine]
) -> None:
    result = price(promo, "P", cart, NOW)
    assert isinstance(result, Priced), result
    assert 0 <= result.subtotal <= MAX_AMOUNT
    assert 0 <= result.discount <= result.subtotal
    assert 0 <= result.total <= result.subtotal
    covered = sum(l.amount for l in cart if promo.skus is None or l.sku in promo.skus)
    if promo.percent_off is not None:
        assert result.discount == covered * promo.percent_off // 100
    else:
        assert result.discount == min(promo.amount_off or 0, covered)
