"""Promotions command handlers: apply a promo code to a cart, and give its use back.

Taking a use has two guards, and the ledger always wins:
1. the usage gate (Redis): an atomic check-and-increment, idempotent per
   checkout session, that keeps the many losers of a popular code off the
   hot PostgreSQL row;
2. the ledger (PostgreSQL): ``taken < max_uses`` in the WHERE clause, in the
   same transaction as the usage row, the inbox row and the reply.
A gate "no" is confirmed with the ledger, and a gate "yes" the ledger refuses
is undone; either mismatch, or a gate that lost its data, reconciles the gate
from the ledger. Redis changes happen before the transaction commits, so a
crash leaves the gate at worst counting a session whose command is then
redelivered (the take is idempotent) or not counting one (the ledger guard
still holds). Any error after the gate admitted the session gives the use
back before it propagates: the transaction rolls back, so the ledger holds
nothing for the session, and neither must the gate (a command that is
dead-lettered is never redelivered to clean up after itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import asyncpg

from messaging.errors import TransientError
from messaging.service import Outcome, Route, failed, ok
from schemas.internal import ApplyPromo, Command, ReleasePromo
from services.promotions import store
from services.promotions.gate import Admission, UsageGate
from services.promotions.rules import CartLine, Invalid, Promo, normalize_code, price
from services.promotions.store import Taken

log = logging.getLogger(__name__)


def _exhausted(promo: Promo) -> str:
    return f"The promo code {promo.code} has no uses left (all {promo.max_uses} are taken)."


class PromotionHandlers:
    def __init__(self, gate: UsageGate, clock: Callable[[], datetime] | None = None) -> None:
        self._gate = gate
        self._clock = clock or (lambda: datetime.now(UTC))

    def routes(self) -> Mapping[type[Command], Route]:
        # ReleasePromo is idempotent by state (the ledger row's status, the gate's
        # holder entry) and runs again on every delivery: re-sent because an
        # ApplyPromo landed after the first one, it gives that use back.
        return {ApplyPromo: Route(self.apply), ReleasePromo: Route(self.release, dedupe=False)}

    async def apply(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        assert isinstance(cmd, ApplyPromo)
        session = cmd.checkout_session_id
        promo = await store.get(conn, normalize_code(cmd.promo_code))
        lines = [CartLine(i.sku, i.quantity, i.unit_price) for i in cmd.items]
        priced = price(promo, cmd.promo_code, lines, self._clock())
        if isinstance(priced, Invalid):
            if promo is not None:  # an earlier, crashed attempt may have taken a use
                await self._gate.give_back(promo.code, session)
            return Outcome(failed(cmd, priced.reason, priced.detail))
        assert promo is not None
        if not await self._admit(conn, promo, session):
            return Outcome(failed(cmd, "PROMO_EXHAUSTED", _exhausted(promo)))
        try:
            taken = await store.take(conn, promo.code, session, priced.discount)
        except Exception:
            # Not on cancellation (a stop): the command is redelivered, and
            # its take is idempotent, so the use is not left behind.
            await self._give_back_after_error(promo.code, session)
            raise
        if taken is Taken.EXHAUSTED:
            # The gate let us in but the ledger is full: the gate was behind.
            await self._gate.give_back(promo.code, session)
            await self._reconcile(conn, promo.code, "the gate admitted a use the ledger refused")
            return Outcome(failed(cmd, "PROMO_EXHAUSTED", _exhausted(promo)))
        return Outcome(ok(cmd, discount=priced.discount, total=priced.total))

    async def _give_back_after_error(self, code: str, session: str) -> None:
        try:
            await self._gate.give_back(code, session)
        except Exception:  # the original error matters more; the reconcile catches up
            log.warning("promo %s: could not give back the use of %s after an error",
                        code, session, exc_info=True)

    async def _admit(self, conn: asyncpg.Connection, promo: Promo, session: str) -> bool:
        answer = await self._gate.take(promo.code, session, promo.max_uses)
        if answer is Admission.FULL and not await store.room_left(conn, promo.code):
            return False
        if answer is not Admission.ADMITTED:
            why = ("the gate has no count for this code" if answer is Admission.MISSING
                   else "the gate is full but the ledger has room")
            await self._reconcile(conn, promo.code, why)
            answer = await self._gate.take(promo.code, session, promo.max_uses)
            if answer is Admission.MISSING:
                raise TransientError(f"usage gate for {promo.code} lost its count again")
        return answer is Admission.ADMITTED

    async def _reconcile(self, conn: asyncpg.Connection, code: str, why: str) -> None:
        result = await self._gate.reconcile(code, await store.holders(conn, code))
        level = logging.WARNING if result.added or result.dropped else logging.DEBUG
        log.log(level, "promo %s: reconciled the usage gate from the ledger (%s): "
                "%d added, %d dropped, %d held", code, why, result.added, result.dropped,
                result.count)

    async def release(self, conn: asyncpg.Connection, cmd: Command) -> Outcome:
        assert isinstance(cmd, ReleasePromo)
        session = cmd.checkout_session_id
        code = await store.release(conn, session)
        # The gate is told even when the ledger held nothing: a crashed apply
        # may have been admitted by the gate without a ledger row.
        for name in {normalize_code(cmd.promo_code), *([code] if code else [])}:
            await self._gate.give_back(name, session)
        return Outcome(ok(cmd, released=code is not None))
