"""The inventory schema. ``available + held + sold = added`` for every product,
and the CHECK constraints make an oversell impossible to commit."""

SCHEMA = "inventory"

DDL = """
CREATE TABLE IF NOT EXISTS inventory.products (
    sku text PRIMARY KEY,
    price bigint NOT NULL CHECK (price >= 0),
    available bigint NOT NULL DEFAULT 0 CHECK (available >= 0),
    held bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold bigint NOT NULL DEFAULT 0 CHECK (sold >= 0),
    added bigint NOT NULL DEFAULT 0,
    hot boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (available + held + sold <= added)
);
CREATE TABLE IF NOT EXISTS inventory.holds (
    checkout_session_id text NOT NULL,
    sku text NOT NULL,
    quantity bigint NOT NULL CHECK (quantity > 0),
    status text NOT NULL DEFAULT 'ACTIVE',
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    PRIMARY KEY (checkout_session_id, sku)
);
CREATE INDEX IF NOT EXISTS holds_active_by_expiry
    ON inventory.holds (expires_at) WHERE status = 'ACTIVE';
"""
