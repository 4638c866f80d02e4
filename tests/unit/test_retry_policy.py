"""When a transiently failing message is given up (messaging/retry.py):
only with its budget spent AND evidence that other messages succeed, so an
outage (nothing succeeds) never empties a topic into its dead letters."""

from __future__ import annotations

import pytest

from messaging.retry import RetryPolicy

POLICY = RetryPolicy(attempts=10, seconds=60.0)


@pytest.mark.parametrize(("failures", "failing_for", "others", "give_up"), [
    (10, 60.0, True, True),     # budget spent, others succeed: this message is the problem
    (50, 600.0, False, False),  # an outage: nothing else succeeds, however long
    (9, 600.0, True, False),    # not enough attempts yet
    (100, 59.9, True, False),   # not long enough yet (fast retries of a lost race)
    (0, 0.0, True, False),
])
def test_give_up_needs_the_budget_spent_and_others_succeeding(
        failures: int, failing_for: float, others: bool, give_up: bool) -> None:
    assert POLICY.give_up(failures, failing_for, others) is give_up


def test_backoff_doubles_up_to_its_cap_with_jitter_around_it() -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=5.0)
    assert policy.delay(1, 0.5) == pytest.approx(0.1)
    assert policy.delay(2, 0.5) == pytest.approx(0.2)
    assert policy.delay(30, 0.5) == pytest.approx(5.0)
    assert policy.delay(30, 0.0) == pytest.approx(2.5)
    assert policy.delay(30, 0.999) < 7.5
