"""The chaos report's goodput: of the checkouts that succeed when nothing breaks, the share
that did."""

from __future__ import annotations

import random

import pytest

from checkout_saga.ops.chaos import SHOULD_SUCCEED, ChaosPlan, check_plan, goodput, plan_checkouts


def result(kind: str) -> dict[str, object]:
    if kind == "ok":
        return {"type": "CheckoutSucceeded", "data": {}}
    return {"type": "CheckoutFailed", "data": {"reason": kind}}


def test_goodput_counts_only_the_kinds_meant_to_succeed() -> None:
    checkouts = plan_checkouts(200, "g", random.Random(1))
    meant = [c for c in checkouts if c.kind in SHOULD_SUCCEED]
    assert meant and len(meant) < len(checkouts)
    # Every checkout meant to succeed did, every other failed: a goodput of 1.
    results = {c.session: result("ok" if c.kind in SHOULD_SUCCEED else "OUT_OF_STOCK")
               for c in checkouts}
    assert goodput(checkouts, results) == 1.0
    # A quarter of them timed out, and one got no answer at all: both count against it.
    for c in meant[: len(meant) // 4]:
        results[c.session] = result("PAYMENT_TIMEOUT")
    del results[meant[-1].session]
    expected = round((len(meant) - len(meant) // 4 - 1) / len(meant), 4)
    assert goodput(checkouts, results) == expected


def test_the_kinds_meant_to_succeed_are_those_that_allow_only_success() -> None:
    assert {"ok", "multi", "flaky", "duplicate"} == SHOULD_SUCCEED


@pytest.mark.parametrize(("plan", "words"), [
    (ChaosPlan(brokers=2), "1 or 3"),
    (ChaosPlan(brokers=1, broker_kills=1), "brokers=3"),
])
def test_a_plan_that_cannot_run_is_refused(plan: ChaosPlan, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_plan(plan)
