"""Pure promo-code rules: is a code usable for a cart, and what it takes off.

No I/O here. Money is integer cents throughout; a percentage is rounded down
(the shop never gives more than the stated percentage), and a discount never
exceeds what it applies to, so a total is never negative. Every amount stays
within a signed 64-bit integer (PostgreSQL's bigint, ``MAX_AMOUNT``): the
intake refuses a cart whose subtotal does not fit, a discount is at most the
subtotal, and a definition's amounts and counts must fit too. Python's
integers do not overflow, so the percentage is computed exactly before it is
rounded down.

Rules, in the order a customer would want to hear about them:
1. the code exists;
2. it has not expired (``expires_at`` is exclusive: at that instant it is over);
3. it applies to the cart: a code limited to SKUs needs at least one of them,
   and then discounts only those lines;
4. the cart's subtotal reaches the code's minimum.
Whether a use is left is not a rule of this module: it is the usage gate's
(Redis, confirmed by the PostgreSQL ledger).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.limits import MAX_AMOUNT, MAX_PROMO_CODE_CHARS, MAX_SKU_CHARS, nul_problem


@dataclass(frozen=True)
class Promo:
    code: str
    max_uses: int
    percent_off: int | None = None
    amount_off: int | None = None
    expires_at: datetime | None = None
    # None: every SKU. Otherwise only lines with these SKUs are discounted.
    skus: frozenset[str] | None = None
    min_subtotal: int = 0


@dataclass(frozen=True)
class CartLine:
    sku: str
    quantity: int
    unit_price: int

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class Priced:
    subtotal: int
    discount: int

    @property
    def total(self) -> int:
        return self.subtotal - self.discount


@dataclass(frozen=True)
class Invalid:
    """Why a code cannot be used for this cart: PROMO_INVALID, or
    INVALID_REQUEST for a cart no code can price."""

    detail: str
    reason: str = "PROMO_INVALID"


def normalize_code(raw: str) -> str:
    """Codes are matched case-insensitively: customers type them by hand."""
    return raw.strip().upper()


def definition_errors(promo: Promo) -> list[str]:
    """What is wrong with a definition an operator wants to create (empty: fine)."""
    errors = []
    if not promo.code or len(promo.code) > MAX_PROMO_CODE_CHARS:
        errors.append(f"the code must be 1-{MAX_PROMO_CODE_CHARS} characters")
    if nul_problem(promo.code):
        errors.append("the code must not contain the character U+0000 (NUL)")
    if (promo.percent_off is None) == (promo.amount_off is None):
        errors.append("give exactly one of percent off or amount off")
    if promo.percent_off is not None and not 1 <= promo.percent_off <= 100:
        errors.append("percent off must be between 1 and 100")
    if promo.amount_off is not None and promo.amount_off < 1:
        errors.append("amount off must be at least 1 (cents)")
    if promo.amount_off is not None and promo.amount_off > MAX_AMOUNT:
        errors.append(f"amount off must be at most {MAX_AMOUNT} (cents)")
    if promo.max_uses < 0:
        errors.append("max uses must not be negative")
    if promo.max_uses > MAX_AMOUNT:
        errors.append(f"max uses must be at most {MAX_AMOUNT}")
    if promo.min_subtotal < 0:
        errors.append("min subtotal must not be negative")
    if promo.min_subtotal > MAX_AMOUNT:
        errors.append(f"min subtotal must be at most {MAX_AMOUNT} (cents)")
    if promo.skus is not None and (not promo.skus or any(not s for s in promo.skus)):
        errors.append("the SKU list must name at least one SKU and no empty one")
    if promo.skus is not None and any(
        len(s) > MAX_SKU_CHARS or nul_problem(s) for s in promo.skus
    ):
        errors.append(f"a SKU must be at most {MAX_SKU_CHARS} characters, without U+0000")
    if promo.expires_at is not None and promo.expires_at.tzinfo is None:
        errors.append("the expiry needs a time zone")
    return errors


def price(promo: Promo | None, code: str, lines: Sequence[CartLine], now: datetime) -> Priced | Invalid:
    """The discount ``promo`` gives this cart, or why it gives none."""
    if promo is None:
        return Invalid(f"The promo code {code} does not exist.")
    if promo.expires_at is not None and now >= promo.expires_at:
        when = promo.expires_at.astimezone(UTC).isoformat(timespec="seconds")
        return Invalid(f"The promo code {promo.code} expired at {when}.")
    subtotal = sum(line.amount for line in lines)
    if subtotal > MAX_AMOUNT:
        # The intake refuses such a cart; never price one that slipped past it.
        return Invalid(
            f"The cart's subtotal, {subtotal}, is more than the largest amount allowed "
            f"({MAX_AMOUNT}).",
            reason="INVALID_REQUEST",
        )
    eligible = [line for line in lines if promo.skus is None or line.sku in promo.skus]
    if not eligible:
        listed = ", ".join(sorted(promo.skus or ()))
        return Invalid(
            f"The promo code {promo.code} does not apply to any item in the cart "
            f"(it applies to {listed})."
        )
    if subtotal < promo.min_subtotal:
        return Invalid(
            f"The promo code {promo.code} needs a subtotal of at least {promo.min_subtotal}; "
            f"the cart comes to {subtotal}."
        )
    return Priced(subtotal, discount(promo, sum(line.amount for line in eligible), subtotal))


def discount(promo: Promo, eligible: int, subtotal: int) -> int:
    """Integer cents off ``eligible`` (the lines the code covers), capped at the
    subtotal: never negative, never more than either, so never past a bigint."""
    if promo.percent_off is not None:
        off = eligible * promo.percent_off // 100
    else:
        off = min(promo.amount_off or 0, eligible)
    return max(0, min(off, eligible, subtotal))


def remaining(max_uses: int, used: int) -> int:
    return max(0, max_uses - used)
