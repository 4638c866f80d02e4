"""The payment schema: one payment per checkout session."""

from services.payment.gateway import GATEWAY_DDL

SCHEMA = "payment"

DDL = (
    """
CREATE TABLE IF NOT EXISTS payment.payments (
    checkout_session_id text PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    amount bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    void_requested boolean NOT NULL DEFAULT false,
    detail text,
    authorization_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""
    + GATEWAY_DDL
)
