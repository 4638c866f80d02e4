"""Pure promo-code rules: is a code usable for a cart, and what it takes off.

No I/O here. Money is integer cents throughout; a percentage is rounded down
(the shop never gives more than the stated percentage), and a discount never
exceeds what it applies to, so a total is never negative.

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
    """Why a code cannot be used for this cart (reason PROMO_INVALID)."""

    detail: str
    reason: str = "PROMO_INVALID"


def normalize_code(raw: str) -> str:
    """Codes are matched case-insensitively: customers type them by hand."""
    return raw.strip().upper()


def definition_errors(promo: Promo) -> list[str]:
    """What is wrong with a definition an operator wants to create (empty: fine)."""
    errors = []
    if not promo.code or len(promo.code) > 64:
        errors.append("the code must be 1-64 characters")
    if (promo.percent_off is None) == (promo.amount_off is None):
        errors.append("give exactly one of percent off or amount off")
    if promo.percent_off is not None and not 1 <= promo.percent_off <= 100:
        errors.append("percent off must be between 1 and 100")
    if promo.amount_off is not None and promo.amount_off < 1:
        errors.append("amount off must be at least 1 (cents)")
    if promo.max_uses < 0:
        errors.append("max uses must not be negative")
    if promo.min_subtotal < 0:
        errors.append("min subtotal must not be negative")
    if promo.skus is not None and (not promo.skus or any(not s for s in promo.skus)):
        errors.append("the SKU list must name at least one SKU and no empty one")
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
    """Integer cents off ``eligible`` (the lines the code covers), capped at the subtotal."""
    if promo.percent_off is not None:
        off = eligible * promo.percent_off // 100
    else:
        off = min(promo.amount_off or 0, eligible)
    return max(0, min(off, eligible, subtotal))


def remaining(max_uses: int, used: int) -> int:
    return max(0, max_uses - used)
