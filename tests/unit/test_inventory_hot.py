"""The pure hot-SKU rules: splitting a cart, automatic marking, and what a
Redis counter should read given PostgreSQL's books."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.inventory.hot import (
    Holder,
    HoldState,
    HotConfig,
    Snapshot,
    newly_hot,
    rate_bucket,
    reconcile,
    split_hot,
)
from services.inventory.rules import Line

CONFIG = HotConfig(threshold=3, window_seconds=1.0, ended_grace_seconds=30, orphan_grace_seconds=600)
NOW = 10_000.0


def test_split_keeps_sku_order_and_sends_unknown_flags_cold() -> None:
    lines = [Line("C", 1, 1), Line("A", 2, 1), Line("B", 3, 1)]
    hot, cold = split_hot(lines, {"A": True, "C": True, "B": False})
    assert [line.sku for line in hot] == ["A", "C"]
    assert [line.sku for line in cold] == ["B"]
    assert split_hot(lines, {}) == ([], sorted(lines, key=lambda line: line.sku))


def test_a_sku_turns_hot_at_the_threshold_and_zero_turns_it_off() -> None:
    assert newly_hot({"A": 2, "B": 3, "C": 9}, CONFIG) == {"B", "C"}
    assert newly_hot({"A": 10_000}, HotConfig(threshold=0)) == set()


def test_rate_windows_are_fixed_buckets() -> None:
    assert rate_bucket(10.0, 1.0) == rate_bucket(10.99, 1.0) == 10
    assert rate_bucket(11.0, 1.0) == 11
    assert rate_bucket(59.0, 30.0) == 1


def snap(counter: int, *holders: Holder) -> Snapshot:
    return Snapshot(counter=counter, version=7, holders=holders)


def test_no_drift_when_redis_matches_available() -> None:
    result = reconcile("A", snap(8), 8, {}, NOW, CONFIG)
    assert (result.expected, result.drift, result.give_back, result.forget) == (8, 0, (), ())


def test_units_in_flight_are_not_drift() -> None:
    # Admitted by Redis, PostgreSQL not committed yet: available still has them.
    holders = (Holder("s1", 2, NOW - 1), Holder("s2", 1, NOW - 1))
    result = reconcile("A", snap(5, *holders), 8, {}, NOW, CONFIG)
    assert (result.expected, result.pending, result.drift) == (5, 3, 0)


def test_held_and_sold_holders_are_already_out_of_available() -> None:
    holders = (Holder("held", 2, NOW - 50), Holder("sold", 1, NOW - 50))
    holds = {"held": HoldState("ACTIVE", None), "sold": HoldState("COMMITTED", NOW - 5)}
    result = reconcile("A", snap(4, *holders), 4, holds, NOW, CONFIG)
    assert result.drift == 0
    assert result.forget == ("sold",)  # its units were sold: the holder just goes


def test_an_ended_hold_waits_for_its_give_back_then_the_reconcile_gives_it() -> None:
    holders = (Holder("fresh", 1, NOW - 100), Holder("stale", 2, NOW - 100))
    holds = {"fresh": HoldState("EXPIRED", NOW - 1), "stale": HoldState("RELEASED", NOW - 31)}
    result = reconcile("A", snap(5, *holders), 8, holds, NOW, CONFIG)
    assert (result.expected, result.drift) == (5, 0)
    assert result.give_back == ("stale",)


def test_an_orphan_holder_is_given_back_only_after_its_grace() -> None:
    young, old = Holder("young", 1, NOW - 599), Holder("old", 1, NOW - 601)
    result = reconcile("A", snap(3, young, old), 5, {}, NOW, CONFIG)
    assert result.give_back == ("old",) and result.drift == 0


def test_drift_either_way_is_the_difference_and_never_below_zero() -> None:
    assert reconcile("A", snap(45), 5, {}, NOW, CONFIG).drift == -40
    assert reconcile("A", snap(0), 12, {}, NOW, CONFIG).drift == 12
    stray = Holder("s", 9, NOW)
    assert reconcile("A", snap(3, stray), 4, {}, NOW, CONFIG).expected == 0


@given(
    available=st.integers(0, 1000),
    flight=st.lists(st.integers(1, 5), max_size=20),
    held=st.lists(st.integers(1, 5), max_size=20),
)
def test_a_consistent_counter_never_shows_drift(available: int, flight: list[int], held: list[int]) -> None:
    """Redis = available less what is in flight, whatever else is held."""
    holders = [Holder(f"f{i}", q, NOW) for i, q in enumerate(flight)]
    holders += [Holder(f"h{i}", q, NOW) for i, q in enumerate(held)]
    holds = {f"h{i}": HoldState("ACTIVE", None) for i in range(len(held))}
    counter = available - sum(flight)
    if counter < 0:
        return
    result = reconcile("A", snap(counter, *holders), available, holds, NOW, CONFIG)
    assert result.drift == 0 and result.pending == sum(flight)
