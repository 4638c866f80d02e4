"""``deal``: the key groups of a consumed batch dealt into lanes (pure)."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import Message

from messaging.worker import deal


def groups_of(*sizes: int) -> list[list[Message]]:
    """One group per key, its messages at increasing offsets."""
    offset = 0
    out = []
    for k, size in enumerate(sizes):
        group = []
        for _ in range(size):
            group.append(Message(topic="t", partition=0, offset=offset, key=f"k{k}".encode(),
                                 value=b"v"))
            offset += 1
        out.append(group)
    return out


def check(groups: list[list[Message]], lanes: int) -> list[list[list[Message]]]:
    """The invariants every dealing keeps; returns the dealing."""
    dealt = deal(groups, lanes)
    assert len(dealt) == min(lanes, len(groups))
    assert all(lane for lane in dealt), "an empty lane"
    # Every group lands whole, once, in exactly one lane, its messages in order.
    placed = [group for lane in dealt for group in lane]
    assert sorted(map(id, placed)) == sorted(map(id, groups))
    for group in placed:
        offsets = [m.offset() or 0 for m in group]
        assert offsets == sorted(offsets)
        assert len({m.key() for m in group}) == 1
    # One key never spreads over two lanes.
    lane_of: dict[bytes | None, int] = {}
    for i, lane in enumerate(dealt):
        for m in (m for group in lane for m in group):
            assert lane_of.setdefault(m.key(), i) == i
    # Balanced: the fullest lane exceeds the emptiest by at most one group.
    sizes = [sum(map(len, lane)) for lane in dealt]
    if sizes:
        assert max(sizes) - min(sizes) <= max(map(len, groups))
    assert sum(sizes) == sum(map(len, groups))
    return dealt


def test_empty_input_gives_no_lanes() -> None:
    assert deal([], 4) == []


def test_one_lane_takes_every_group_and_keeps_each_in_order() -> None:
    groups = groups_of(3, 1, 2)
    (lane,) = check(groups, 1)
    assert sorted(map(len, lane), reverse=True) == [3, 2, 1]
    assert [m.offset() for m in lane[0]] == [0, 1, 2]


def test_never_more_lanes_than_groups() -> None:
    dealt = check(groups_of(2, 5), 4)
    assert sorted(sum(map(len, lane)) for lane in dealt) == [2, 5]


def test_equal_groups_are_spread_evenly() -> None:
    dealt = check(groups_of(*[1] * 8), 4)
    assert [sum(map(len, lane)) for lane in dealt] == [2, 2, 2, 2]
    dealt = check(groups_of(*[2] * 9), 3)
    assert [sum(map(len, lane)) for lane in dealt] == [6, 6, 6]


def test_a_big_key_gets_a_lane_while_small_ones_share_the_others() -> None:
    groups = groups_of(1, 1, 1, 1, 5, 1)  # the big one last: dealt first all the same
    dealt = check(groups, 2)
    assert sorted(sum(map(len, lane)) for lane in dealt) == [5, 5]
    big = next(lane for lane in dealt if groups[4] in lane)
    assert big == [groups[4]]


def test_counts_are_balanced_not_group_numbers() -> None:
    dealt = check(groups_of(4, 3, 3, 2, 2, 2), 3)
    assert sorted(sum(map(len, lane)) for lane in dealt) == [5, 5, 6]


@pytest.mark.parametrize("seed", range(20))
def test_random_batches_keep_every_invariant(seed: int) -> None:
    rnd = random.Random(seed)
    sizes = [rnd.randint(1, 12) for _ in range(rnd.randint(1, 40))]
    lanes = rnd.randint(1, 8)
    dealt = check(groups_of(*sizes), lanes)
    loads = sorted(sum(map(len, lane)) for lane in dealt)
    # Greedy largest-first: no lane holds more than the ideal share plus one group.
    assert loads[-1] <= -(-sum(sizes) // len(dealt)) + max(sizes)
