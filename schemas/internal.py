"""Internal commands (coordinator -> service) and the reply (service -> coordinator).

They travel in the same CloudEvents envelope as external events, keyed by
checkout session id, on topics the contract does not name (see
``messaging.topics``). Commands are imperative; each service answers every
command with one ``CommandReply`` whose ``command`` names what it answers.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.contract import (
    Code,
    Currency,
    CustomerId,
    FailedSku,
    FailureReason,
    Items,
    Money,
    NonBlankStr,
    OrderId,
    PaymentMethodName,
    PaymentToken,
    PromoCode,
    Reason,
    SessionId,
    ShippingAddress,
)
from schemas.limits import MAX_HOLD_TTL_SECONDS, MAX_ITEMS

# The same limits as the contract's: a command carries what a valid request
# (or an order made from one) holds, so a limit here never refuses what the
# intake let through, and a bug that builds something else fails at the sender.
Attempt = Annotated[StrictInt, Field(ge=1)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Command(_Message):
    checkout_session_id: SessionId
    attempt: Attempt = 1


class ReserveStock(Command):
    items: Items
    hold_ttl_seconds: float = Field(gt=0, le=MAX_HOLD_TTL_SECONDS)


class ReleaseStock(Command):
    reason: Reason = "compensation"


class CommitStock(Command):
    # The cart again, so an expired hold can be taken anew if stock allows.
    items: Items


class CreateOrder(Command):
    order_id: OrderId
    customer_id: CustomerId
    items: Items
    subtotal: Money
    discount: Money
    total: Money
    currency: Currency
    shipping_address: ShippingAddress | None = None


class CancelOrder(Command):
    payment_failed: bool
    reason: Reason


class ConfirmOrder(Command):
    pass


class AuthorizePayment(Command):
    amount: Money
    currency: Currency
    method: PaymentMethodName
    token: PaymentToken


class VoidPayment(Command):
    pass


class CapturePayment(Command):
    pass


class RestockOrder(Command):
    """Put a cancelled or returned order's units back on sale (sold -> available)."""

    order_id: OrderId
    items: Items
    reason: Reason


class RefundPayment(Command):
    """Give a cancelled or returned order's money back: refund a capture, void a
    mere authorization."""

    order_id: OrderId
    reason: Reason


class ApplyPromo(Command):
    """Check a promo code against the cart and take one use of it (once per session)."""

    promo_code: PromoCode
    items: Items


class ReleasePromo(Command):
    """Give back the use the session took (compensation)."""

    promo_code: PromoCode
    reason: Reason = "compensation"


class CommandReply(_Message):
    checkout_session_id: SessionId
    command: Code
    ok: bool
    data: dict[str, Any] = Field(default_factory=dict)
    reason: FailureReason | None = None
    detail: NonBlankStr | None = None
    skus: Annotated[list[FailedSku], Field(max_length=MAX_ITEMS)] | None = None


COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        ReserveStock,
        ReleaseStock,
        CommitStock,
        CreateOrder,
        CancelOrder,
        ConfirmOrder,
        AuthorizePayment,
        VoidPayment,
        CapturePayment,
        ApplyPromo,
        ReleasePromo,
        RestockOrder,
        RefundPayment,
    )
}
REPLY_TYPE = "CommandReply"
