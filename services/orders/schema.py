"""The orders schema: one order per checkout session, and its history."""

SCHEMA = "orders"

DDL = """
CREATE TABLE IF NOT EXISTS orders.orders (
    order_id text PRIMARY KEY,
    checkout_session_id text NOT NULL UNIQUE,
    customer_id text NOT NULL,
    status text NOT NULL,
    items jsonb NOT NULL,
    subtotal bigint NOT NULL,
    discount bigint NOT NULL,
    total bigint NOT NULL,
    currency text NOT NULL,
    shipping_address jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz
);
CREATE TABLE IF NOT EXISTS orders.history (
    id bigserial PRIMARY KEY,
    order_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    from_status text,
    to_status text NOT NULL,
    reason text
);
CREATE INDEX IF NOT EXISTS history_by_order ON orders.history (order_id, id);
"""
