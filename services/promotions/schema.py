"""The promotions schema: code definitions and the usage ledger.

The ledger (``usages``, one row per checkout session) is the record of who
holds a use. ``codes.taken`` counts the ledger's TAKEN rows of a code, kept in
the same transaction as every ledger change; it exists so that the last use is
guarded in the WHERE clause of one UPDATE (``taken < max_uses``), and the
CHECK makes taking more than ``max_uses`` impossible to commit, whatever Redis
says.
"""

SCHEMA = "promotions"

DDL = """
CREATE TABLE IF NOT EXISTS promotions.codes (
    code text PRIMARY KEY,
    percent_off integer CHECK (percent_off BETWEEN 1 AND 100),
    amount_off bigint CHECK (amount_off >= 1),
    max_uses bigint NOT NULL CHECK (max_uses >= 0),
    taken bigint NOT NULL DEFAULT 0 CHECK (taken >= 0),
    expires_at timestamptz,
    skus text[],
    min_subtotal bigint NOT NULL DEFAULT 0 CHECK (min_subtotal >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((percent_off IS NULL) <> (amount_off IS NULL)),
    CHECK (taken <= max_uses)
);
CREATE TABLE IF NOT EXISTS promotions.usages (
    checkout_session_id text PRIMARY KEY,
    code text NOT NULL REFERENCES promotions.codes (code),
    discount bigint NOT NULL CHECK (discount >= 0),
    status text NOT NULL CHECK (status IN ('TAKEN', 'RELEASED')),
    taken_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE INDEX IF NOT EXISTS usages_taken_by_code
    ON promotions.usages (code) WHERE status = 'TAKEN';
"""
