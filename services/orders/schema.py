"""The orders schema: one order per checkout session, its history, the inbox of
external events, and the settlements (money and stock going back)."""

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
    reason text,
    -- 'transition' (from -> to), 'note' (a settlement step done) or 'rejected'
    -- (an event that changed nothing; from = to = the status it found)
    kind text NOT NULL DEFAULT 'transition'
);
CREATE INDEX IF NOT EXISTS history_by_order ON orders.history (order_id, id);
DO $$
BEGIN
    -- Databases made before the column existed; checked first so a routine
    -- start never takes ALTER TABLE's exclusive lock.
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'orders'
                   AND table_name = 'history' AND column_name = 'kind') THEN
        ALTER TABLE orders.history ADD COLUMN kind text NOT NULL DEFAULT 'transition';
    END IF;
END $$;

-- External events (orders.requests, fulfillment.events) already handled, by
-- CloudEvents id (contract guarantee 5): a re-delivery finds its row and does nothing.
CREATE TABLE IF NOT EXISTS orders.event_inbox (
    event_id text PRIMARY KEY,
    topic text NOT NULL,
    type text NOT NULL,
    order_id text,
    handled_at timestamptz NOT NULL DEFAULT now()
);

-- The cancel / return saga: one row per order whose money and stock go back.
-- Each step is done when its answer is booked (payment_status, restocked);
-- a RUNNING row past next_attempt_at has its missing commands sent again.
CREATE TABLE IF NOT EXISTS orders.settlements (
    order_id text PRIMARY KEY,
    checkout_session_id text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('CANCEL', 'RETURN')),
    reason text,
    state text NOT NULL DEFAULT 'RUNNING' CHECK (state IN ('RUNNING', 'DONE')),
    payment_status text,
    restocked jsonb,
    attempts int NOT NULL DEFAULT 1,
    last_error text,
    next_attempt_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS settlements_due ON orders.settlements (next_attempt_at)
    WHERE state = 'RUNNING';
"""
