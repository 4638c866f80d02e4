"""What `replay --since` accepts, and which groups a topic's replay rewinds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from checkout_saga.ops.replay import PartitionPlan, ReplayError, groups_for, parse_since
from messaging.topics import CHECKOUT_REQUESTED, GROUPS, ORDERS_REQUESTS, SAGA_REPLIES

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["beginning", "earliest", " Start "])
def test_the_beginning(text: str) -> None:
    assert parse_since(text, NOW) is None


@pytest.mark.parametrize("text,ago", [("15m", timedelta(minutes=15)), ("2h ago", timedelta(hours=2)),
                                      ("90s", timedelta(seconds=90)), ("1.5d", timedelta(days=1.5))])
def test_durations_ago(text: str, ago: timedelta) -> None:
    assert parse_since(text, NOW) == NOW - ago


def test_rfc3339_times_and_naive_ones_as_utc() -> None:
    assert parse_since("2026-11-25T09:30:00Z", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2026-11-25T11:30:00+02:00", NOW) == NOW - timedelta(minutes=30)
    assert parse_since("2026-11-25T09:30:00", NOW) == NOW - timedelta(minutes=30)


@pytest.mark.parametrize("text", ["2026-11-25T11:00:00Z", "2027-01-01T00:00:00+00:00"])
def test_a_future_time_is_refused(text: str) -> None:
    # tansu answers offsets_for_times with 0 for it: everything would be replayed.
    with pytest.raises(ReplayError, match="future"):
        parse_since(text, NOW)


@pytest.mark.parametrize("text", ["yesterday", "10 parsecs", "", "2026-13-45"])
def test_unreadable_times_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ReplayError, match="beginning"):
        parse_since(text, NOW)


def test_groups_default_to_every_project_group_reading_the_topic() -> None:
    assert groups_for(CHECKOUT_REQUESTED, None) == ["checkout-saga.coordinator"]
    assert groups_for(SAGA_REPLIES, None) == ["checkout-saga.coordinator"]
    assert groups_for(ORDERS_REQUESTS, None) == [g for g, t in GROUPS.items() if ORDERS_REQUESTS in t]
    assert groups_for(CHECKOUT_REQUESTED, "ops.custom") == ["ops.custom"]
    with pytest.raises(ReplayError, match="--group"):
        groups_for("checkout.results", None)


def test_how_much_a_plan_replays() -> None:
    assert PartitionPlan("g", "t", 0, committed=40, target=10, new=10).to_replay == 30
    assert PartitionPlan("g", "t", 0, committed=None, target=10, new=None).to_replay is None
