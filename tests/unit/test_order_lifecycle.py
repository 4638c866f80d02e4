"""The order state machine: every (from, to) pair, the paths checkout walks,
and the terminal states."""

from __future__ import annotations

import itertools
import re

import pytest

from services.orders import lifecycle
from services.orders.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    OrderStatus,
    can_move,
    is_terminal,
    path_to,
)

S = OrderStatus

# The seed's state machine (design.md), plus the cancel saga's CANCELLING
# state, written out edge by edge, independently of the module's table.
EXPECTED: frozenset[tuple[OrderStatus, OrderStatus]] = frozenset({
    (S.PENDING, S.PAYMENT_AUTHORIZED),
    (S.PAYMENT_AUTHORIZED, S.CONFIRMED),
    (S.CONFIRMED, S.SHIPPED),
    (S.SHIPPED, S.DELIVERED),
    (S.PENDING, S.PAYMENT_FAILED),
    (S.PAYMENT_FAILED, S.CANCELLED),
    # cancelled before shipment (checkout compensation)
    (S.PENDING, S.CANCELLED),
    (S.PAYMENT_AUTHORIZED, S.CANCELLED),
    (S.CONFIRMED, S.CANCELLED),
    # customer cancel of a confirmed order
    (S.CONFIRMED, S.CANCELLING),
    (S.CANCELLING, S.CANCELLED),
    (S.DELIVERED, S.RETURN_INITIATED),
    (S.RETURN_INITIATED, S.RETURNED),
})
PAIRS = list(itertools.product(OrderStatus, repeat=2))


def distances(start: OrderStatus) -> dict[OrderStatus, int]:
    """Shortest number of moves from ``start`` over EXPECTED (plain BFS)."""
    dist = {start: 0}
    queue = [start]
    while queue:
        here = queue.pop(0)
        for a, b in sorted(EXPECTED):
            if a == here and b not in dist:
                dist[b] = dist[here] + 1
                queue.append(b)
    return dist


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_pair_is_allowed_exactly_when_the_state_machine_says(
    current: OrderStatus, target: OrderStatus
) -> None:
    assert can_move(current, target) is ((current, target) in EXPECTED)


def test_the_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)


def test_the_docstring_diagram_matches_the_table() -> None:
    """The diagram people read and the table the code uses cannot drift apart."""
    drawn: set[tuple[str, str]] = set()
    for line in (lifecycle.__doc__ or "").splitlines():
        chain = line.split("(")[0].strip()
        if "->" not in chain:
            continue
        stages = [re.findall(r"[A-Z_]+", part) for part in chain.split("->")]
        for sources, targets in itertools.pairwise(stages):
            drawn |= {(a, b) for a in sources for b in targets}
    assert drawn == {(a.value, b.value) for a, b in EXPECTED}


@pytest.mark.parametrize("status", list(OrderStatus))
def test_terminal_states(status: OrderStatus) -> None:
    assert is_terminal(status) is (status in (S.CANCELLED, S.RETURNED))


@pytest.mark.parametrize("status", list(OrderStatus))
def test_no_move_leads_back_to_pending_or_into_itself(status: OrderStatus) -> None:
    assert not can_move(status, S.PENDING)
    assert not can_move(status, status)


@pytest.mark.parametrize("status", [S.SHIPPED, S.DELIVERED, S.RETURN_INITIATED, S.RETURNED])
def test_nothing_shipped_can_be_cancelled(status: OrderStatus) -> None:
    assert not can_move(status, S.CANCELLED) and not can_move(status, S.CANCELLING)
    with pytest.raises(IllegalTransition):
        path_to(status, S.CANCELLED)


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_path_to_is_a_shortest_chain_of_legal_moves(
    current: OrderStatus, target: OrderStatus
) -> None:
    dist = distances(current)
    if target not in dist:
        with pytest.raises(IllegalTransition) as info:
            path_to(current, target)
        assert (info.value.current, info.value.target) == (current, target)
        assert str(current) in str(info.value) and str(target) in str(info.value)
        return
    path = path_to(current, target)
    assert len(path) == dist[target]
    assert path[-1:] == ((target,) if path else ())
    for a, b in itertools.pairwise((current, *path)):
        assert (a, b) in EXPECTED


@pytest.mark.parametrize(
    ("current", "target", "path"),
    [
        (S.PENDING, S.PENDING, ()),
        (S.PENDING, S.CONFIRMED, (S.PAYMENT_AUTHORIZED, S.CONFIRMED)),
        (S.PENDING, S.PAYMENT_FAILED, (S.PAYMENT_FAILED,)),
        (S.PAYMENT_FAILED, S.CANCELLED, (S.CANCELLED,)),
        (S.CONFIRMED, S.CANCELLED, (S.CANCELLED,)),
        (S.CONFIRMED, S.DELIVERED, (S.SHIPPED, S.DELIVERED)),
        (
            S.PENDING, S.RETURNED,
            (S.PAYMENT_AUTHORIZED, S.CONFIRMED, S.SHIPPED, S.DELIVERED, S.RETURN_INITIATED,
             S.RETURNED),
        ),
    ],
)
def test_the_paths_the_services_walk(
    current: OrderStatus, target: OrderStatus, path: tuple[OrderStatus, ...]
) -> None:
    assert path_to(current, target) == path


@pytest.mark.parametrize(
    ("current", "target"),
    [(S.CANCELLED, S.CONFIRMED), (S.RETURNED, S.DELIVERED), (S.PAYMENT_FAILED, S.CONFIRMED),
     (S.SHIPPED, S.CONFIRMED), (S.CANCELLING, S.SHIPPED), (S.DELIVERED, S.CANCELLED)],
)
def test_impossible_paths_raise(current: OrderStatus, target: OrderStatus) -> None:
    with pytest.raises(IllegalTransition):
        path_to(current, target)
