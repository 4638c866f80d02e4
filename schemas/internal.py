"""Internal commands (coordinator -> service) and the reply (service -> coordinator).

They travel in the same CloudEvents envelope as external events, keyed by
checkout session id, on topics the contract does not name (see
``checkout_saga.topics``). Commands are imperative; each service answers every
command with one ``CommandReply`` whose ``command`` names what it answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.contract import FailureReason, LineItem, ShippingAddress


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Command(_Message):
    checkout_session_id: str
    attempt: int = 1


class ReserveStock(Command):
    items: list[LineItem]
    hold_ttl_seconds: float = Field(gt=0)


class ReleaseStock(Command):
    reason: str = "compensation"


class CommitStock(Command):
    # The cart again, so an expired hold can be taken anew if stock allows.
    items: list[LineItem]


class CreateOrder(Command):
    order_id: str
    customer_id: str
    items: list[LineItem]
    subtotal: StrictInt
    discount: StrictInt
    total: StrictInt
    currency: str
    shipping_address: ShippingAddress | None = None


class CancelOrder(Command):
    payment_failed: bool
    reason: str


class ConfirmOrder(Command):
    pass


class AuthorizePayment(Command):
    amount: StrictInt
    currency: str
    method: str
    token: str


class VoidPayment(Command):
    pass


class CapturePayment(Command):
    pass


class RestockOrder(Command):
    """Put a cancelled or returned order's units back on sale (sold -> available)."""

    order_id: str
    items: list[LineItem]
    reason: str


class RefundPayment(Command):
    """Give a cancelled or returned order's money back: refund a capture, void a
    mere authorization."""

    order_id: str
    reason: str


class ApplyPromo(Command):
    """Check a promo code against the cart and take one use of it (once per session)."""

    promo_code: str
    items: list[LineItem]


class ReleasePromo(Command):
    """Give back the use the session took (compensation)."""

    promo_code: str
    reason: str = "compensation"


class CommandReply(_Message):
    checkout_session_id: str
    command: str
    ok: bool
    data: dict[str, Any] = Field(default_factory=dict)
    reason: FailureReason | None = None
    detail: str | None = None
    skus: list[str] | None = None


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
