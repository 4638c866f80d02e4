"""The dead-letter topic and its source, named by one pair of functions."""

from __future__ import annotations

from checkout_saga.ops.dlq import dlq_name
from schemas.contract import dlq_source, dlq_topic, is_dlq_topic


def test_a_dlq_topic_names_its_source() -> None:
    assert dlq_topic("orders.requests") == "orders.requests.dlq"
    assert is_dlq_topic("orders.requests.dlq") and not is_dlq_topic("orders.requests")
    assert dlq_source("orders.requests.dlq") == "orders.requests"


def test_a_topic_or_its_dlq_name_the_same_dead_letters() -> None:
    assert dlq_name("orders.requests") == dlq_name("orders.requests.dlq") == "orders.requests.dlq"
