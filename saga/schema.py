"""The coordinator's schema: one row per saga, and its step-by-step log."""

SCHEMA = "saga"

DDL = """
CREATE TABLE IF NOT EXISTS saga.instances (
    checkout_session_id text PRIMARY KEY,
    definition_version int NOT NULL,
    status text NOT NULL,
    state jsonb NOT NULL,
    version int NOT NULL DEFAULT 1,
    deadline_at timestamptz,
    deadline_token text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS instances_due ON saga.instances (deadline_at)
    WHERE deadline_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_by_status ON saga.instances (status);
CREATE TABLE IF NOT EXISTS saga.step_log (
    id bigserial PRIMARY KEY,
    checkout_session_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    step text NOT NULL,
    kind text NOT NULL,
    detail text NOT NULL
);
CREATE INDEX IF NOT EXISTS step_log_by_session ON saga.step_log (checkout_session_id, id);
"""
