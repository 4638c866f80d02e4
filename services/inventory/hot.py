"""Pure rules for hot SKUs: which lines the Redis gate sees, when a SKU turns
hot by itself, and what a Redis counter should read given PostgreSQL's books.

The gate (``services.inventory.gate``) is admission control in front of
PostgreSQL, never the record: it may refuse a checkout PostgreSQL would have
taken (until a reconcile corrects it), but it cannot sell what PostgreSQL does
not have, because PostgreSQL's guarded UPDATE still runs for every admitted
line.

A holder is a checkout session that the gate let through for a SKU and that
has not given the units back or turned them into a sale yet. What a holder's
PostgreSQL hold says decides whether the counter already accounts for it:

    hold ACTIVE or COMMITTED   the units left PostgreSQL's ``available`` too
    no hold yet (in flight)    the units are still in ``available``
    hold RELEASED or EXPIRED   the units went back to ``available``, but the
                               give-back to Redis has not happened yet
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from services.inventory.rules import Line, in_sku_order

HOLDS_STOCK = frozenset({"ACTIVE", "COMMITTED"})
ENDED = frozenset({"RELEASED", "EXPIRED"})


@dataclass(frozen=True)
class HotConfig:
    # A cold SKU turns hot when it gets this many reservations inside one
    # window; 0 turns automatic marking off (operators still mark by hand).
    threshold: int = 200
    window_seconds: float = 1.0
    # An ended hold's units are normally given back to Redis right after the
    # sweeper or the release commits; after this long a reconcile does it.
    ended_grace_seconds: float = 30.0
    # A holder with no hold at all this long after admission lost its
    # reservation (rolled back and never retried): give its units back. Far
    # longer than a reserve that is retried through a database outage.
    orphan_grace_seconds: float = 600.0


def rate_bucket(now: float, window_seconds: float) -> int:
    """The fixed window a reservation at ``now`` counts in."""
    return int(now // window_seconds)


def newly_hot(counts: Mapping[str, int], config: HotConfig) -> set[str]:
    """SKUs whose reservation count in the current window crossed the threshold."""
    if config.threshold <= 0:
        return set()
    return {sku for sku, n in counts.items() if n >= config.threshold}


def split_hot(lines: Sequence[Line], hot: Mapping[str, bool]) -> tuple[list[Line], list[Line]]:
    """(hot lines, cold lines), each in SKU order, as the gate and the rows need them."""
    ordered = in_sku_order(lines)
    return ([line for line in ordered if hot.get(line.sku)],
            [line for line in ordered if not hot.get(line.sku)])


@dataclass(frozen=True)
class Holder:
    session_id: str
    quantity: int
    admitted_at: float  # Redis server time, seconds


@dataclass(frozen=True)
class HoldState:
    status: str
    ended_at: float | None  # seconds; None while the hold is ACTIVE


@dataclass(frozen=True)
class Reconciliation:
    sku: str
    counter: int
    expected: int
    # Holders whose units should go back to the counter now (their hold ended
    # long ago, or they never got one), and holders whose units were sold.
    give_back: tuple[str, ...] = ()
    forget: tuple[str, ...] = ()
    pending: int = 0  # units of holders the counter is still short of, by design

    @property
    def drift(self) -> int:
        return self.expected - self.counter


@dataclass(frozen=True)
class Snapshot:
    """One SKU as the gate saw it, in one atomic read."""

    counter: int | None
    version: int
    holders: tuple[Holder, ...] = field(default_factory=tuple)


def reconcile(
    sku: str,
    snapshot: Snapshot,
    available: int,
    holds: Mapping[str, HoldState],
    now: float,
    config: HotConfig,
) -> Reconciliation:
    """What the counter should read, given PostgreSQL's ``available`` (read
    after the snapshot) and the holds of the snapshot's holders.

    Every holder whose units are still in ``available`` (in flight, or ended
    but not given back yet) is subtracted: the counter already lost them.
    """
    assert snapshot.counter is not None
    pending = 0
    give_back: list[str] = []
    forget: list[str] = []
    for holder in snapshot.holders:
        hold = holds.get(holder.session_id)
        if hold is not None and hold.status in HOLDS_STOCK:
            if hold.status == "COMMITTED":
                forget.append(holder.session_id)
            continue
        pending += holder.quantity
        if hold is None:
            if now - holder.admitted_at > config.orphan_grace_seconds:
                give_back.append(holder.session_id)
        elif hold.status in ENDED:
            ended = hold.ended_at if hold.ended_at is not None else holder.admitted_at
            if now - ended > config.ended_grace_seconds:
                give_back.append(holder.session_id)
    return Reconciliation(
        sku=sku,
        counter=snapshot.counter,
        expected=max(0, available - pending),
        give_back=tuple(give_back),
        forget=tuple(forget),
        pending=pending,
    )


class Admission(StrEnum):
    ADMITTED = "ADMITTED"  # every hot line taken from Redis (or taken before: a retry)
    SHORT = "SHORT"  # a line short in Redis: nothing taken
    MISSING = "MISSING"  # a counter is missing (Redis restarted): rebuild it first


@dataclass(frozen=True)
class GateAnswer:
    admission: Admission
    # For SHORT: what Redis has left of each line's SKU; for MISSING: the SKUs to rebuild.
    left: Mapping[str, int] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
