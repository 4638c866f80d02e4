"""The live usage gate port: who holds a use of a code, counted outside PostgreSQL.

The gate is fast and atomic but forgetful (Redis loses its data on a restart),
so it is never the record: the PostgreSQL ledger is. Handlers receive a
``UsageGate`` and never import a client library; the Redis adapter lives in
``services.promotions.redis_gate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Admission(StrEnum):
    ADMITTED = "ADMITTED"  # the session holds a use now (new, or already held)
    FULL = "FULL"  # the gate counts max_uses holders already
    MISSING = "MISSING"  # the gate knows nothing of this code: rebuild it from the ledger


@dataclass(frozen=True)
class Reconciled:
    added: int  # holders the ledger knows and the gate had lost
    dropped: int  # holders the gate counted and the ledger does not know
    count: int  # the gate's count afterwards


class UsageGate(Protocol):
    async def take(self, code: str, session_id: str, max_uses: int) -> Admission:
        """Atomically: admit the session if it holds a use already or one is left."""
        ...

    async def give_back(self, code: str, session_id: str) -> bool:
        """Forget the session's use; False when the gate did not count it."""
        ...

    async def reconcile(self, code: str, holders: Sequence[str]) -> Reconciled:
        """Make the gate agree with the ledger's ``holders``.

        A holder the gate admitted only moments ago may be missing from the
        ledger because its transaction has not committed yet; such a recent
        holder is kept, an older unknown one is dropped.
        """
        ...
