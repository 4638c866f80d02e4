"""Kafka errors are classified (messaging.errors.kafka_error): refusals
of one message are permanent, the cluster's state is transient, a fatal
client error is neither."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from messaging.errors import (
    KafkaFatalError,
    MessageRefused,
    PermanentError,
    TransientError,
    is_transient,
    kafka_error,
)


@pytest.mark.parametrize("code", [
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.TOPIC_EXCEPTION,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP, KafkaError.INVALID_MSG_SIZE,
    KafkaError._INVALID_ARG,
])
def test_refusals_of_the_message_are_permanent(code: int) -> None:
    err = kafka_error(KafkaError(code))
    assert isinstance(err, MessageRefused) and isinstance(err, PermanentError)
    assert not is_transient(err)


@pytest.mark.parametrize("code", [
    KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.REQUEST_TIMED_OUT,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._QUEUE_FULL,
    KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE: a CRC error on the way
    KafkaError.INVALID_PRODUCER_EPOCH,
])
def test_the_cluster_s_state_is_transient(code: int) -> None:
    assert is_transient(kafka_error(KafkaError(code)))


def test_a_retriable_error_is_transient_whatever_its_code() -> None:
    assert isinstance(kafka_error(KafkaError(KafkaError.INVALID_RECORD, retriable=True)), TransientError)


def test_a_fatal_error_is_neither_transient_nor_the_message_s_fault() -> None:
    for err in (KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True),
                KafkaError(KafkaError._FATAL)):
        classified = kafka_error(err)
        assert isinstance(classified, KafkaFatalError)
        assert not is_transient(classified) and not isinstance(classified, PermanentError)
