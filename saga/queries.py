"""Read-side queries over the coordinator's schema (for ``saga show``)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def show(conn: asyncpg.Connection, session_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT status, state, definition_version, created_at, finished_at, deadline_at "
        "FROM saga.instances WHERE checkout_session_id = $1",
        session_id,
    )
    if row is None:
        return None
    state = json.loads(row["state"])
    steps = await conn.fetch(
        "SELECT at, step, kind, detail FROM saga.step_log WHERE checkout_session_id = $1 ORDER BY id",
        session_id,
    )
    return {
        "checkout_session_id": session_id,
        "status": row["status"],
        "definition_version": row["definition_version"],
        "order_id": state["context"].get("order_id"),
        "failure": state.get("failure"),
        "stuck": state.get("stuck", False),
        "created_at": row["created_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "deadline_at": row["deadline_at"].isoformat() if row["deadline_at"] else None,
        "steps": [
            {"at": s["at"].isoformat(), "step": s["step"], "kind": s["kind"], "detail": s["detail"]}
            for s in steps
        ],
    }
