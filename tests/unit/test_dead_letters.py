"""Dead letters always fit the producer's limit (messaging/dead_letters.py):
the original bytes when they fit, else a truncated copy with the original's
size and digest; error and stack headers bounded whatever the error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from messaging.dead_letters import (
    ERROR_BYTES,
    KEY_BYTES,
    ORIGINAL_KEY_SIZE,
    ORIGINAL_SHA256,
    ORIGINAL_SIZE,
    STACK_BYTES,
    TRUNCATED,
    clip,
    dead_letter,
    fit,
    fits,
    minimal,
    tail,
    wire_size,
)
from messaging.kafka import DEFAULT_MESSAGE_MAX_BYTES
from messaging.message import OutgoingMessage

LIMIT = DEFAULT_MESSAGE_MAX_BYTES


@dataclass
class Consumed:
    """What dead_letter reads of a consumed confluent-kafka message."""

    v: bytes
    k: bytes | None = b"cs_1"
    t: str = "checkout.requested"

    def key(self) -> bytes | None:
        return self.k

    def value(self) -> bytes:
        return self.v

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42


def letter(value: bytes, key: str = "cs_1", **headers: str) -> OutgoingMessage:
    return OutgoingMessage("checkout.requested.dlq", key, value,
                           {"dlq.error": "InvalidEvent: bad", "dlq.stage": "parse", **headers})


def test_a_small_dead_letter_keeps_the_original_bytes_and_gets_no_truncation_headers() -> None:
    msg = dead_letter(Consumed(b'{"not": "an event"}'), ValueError("bad"))  # type: ignore[arg-type]
    assert msg.value == b'{"not": "an event"}' and msg.key == "cs_1"
    assert msg.topic == "checkout.requested.dlq"
    assert not set(msg.headers) & {TRUNCATED, ORIGINAL_SIZE, ORIGINAL_SHA256}
    assert msg.headers["dlq.source.partition"] == "3" and msg.headers["dlq.source.offset"] == "42"


def test_the_issue_s_999000_byte_value_becomes_a_truncated_copy_that_fits() -> None:
    """The case of issue 14: under the broker's 1 MB, over ours with the error headers."""
    original = b"x" * 999_000
    try:  # raised, so that it has a stack, with a validation error's length of text
        raise ValueError("invalid CloudEvents envelope: " + "field required; " * 100)
    except ValueError as exc:
        error = exc
    msg = dead_letter(Consumed(original), error)  # type: ignore[arg-type]
    assert wire_size(msg.key, msg.value, msg.headers) <= LIMIT
    assert msg.headers[TRUNCATED] == "true"
    assert msg.headers[ORIGINAL_SIZE] == "999000"
    assert msg.headers[ORIGINAL_SHA256] == hashlib.sha256(original).hexdigest()
    assert original.startswith(msg.value) and len(msg.value) > 990_000  # as much as fits
    assert msg.headers["dlq.error"].startswith("ValueError: invalid")


def test_a_value_that_fits_alone_but_not_with_the_headers_is_cut() -> None:
    headers_cost = wire_size("cs_1", b"", letter(b"").headers)
    exact = letter(b"v" * (LIMIT - headers_cost))
    assert fit(exact, LIMIT) is exact
    over = letter(b"v" * (LIMIT - headers_cost + 1))
    assert fit(over, LIMIT).headers[TRUNCATED] == "true"


def test_error_and_stack_headers_are_bounded_in_bytes_whatever_the_error() -> None:
    huge = "é" * 50_000 + "END"  # two bytes a character: bounds are bytes, not characters
    msg = dead_letter(Consumed(b"{}"), ValueError(huge))  # type: ignore[arg-type]
    assert len(msg.headers["dlq.error"].encode()) <= ERROR_BYTES
    assert len(msg.headers["dlq.stack"].encode()) <= STACK_BYTES
    assert msg.headers["dlq.stack"].rstrip().endswith("END")  # the stack keeps its end
    assert msg.value == b"{}"  # the small value itself is kept


def test_a_huge_key_is_cut_and_its_size_said() -> None:
    msg = fit(letter(b"v" * 10, key="k" * 1_200_000), LIMIT)
    assert len(msg.key.encode()) == KEY_BYTES
    assert msg.headers[ORIGINAL_KEY_SIZE] == "1200000"
    assert msg.value == b"v" * 10 and fits(msg, LIMIT)


def test_cutting_a_copy_again_keeps_the_first_original_s_figures() -> None:
    original = b"y" * 900_000
    once = fit(letter(original), 500_000)
    twice = fit(once, 100_000)
    assert twice.headers[ORIGINAL_SIZE] == "900000"
    assert twice.headers[ORIGINAL_SHA256] == hashlib.sha256(original).hexdigest()
    assert original.startswith(twice.value) and fits(twice, 100_000)


def test_with_too_little_room_the_stack_goes_first_then_the_error() -> None:
    msg = letter(b"z" * 20_000, **{"dlq.stack": "s" * STACK_BYTES, "dlq.error": "e" * ERROR_BYTES})
    cut = fit(msg, 3_000)
    assert "dlq.stack" not in cut.headers and "dlq.error" in cut.headers
    assert fits(cut, 3_000) and cut.headers[ORIGINAL_SIZE] == "20000"


def test_minimal_has_no_value_and_keeps_the_original_s_figures() -> None:
    original = b"w" * 5_000
    small = minimal(letter(original, **{"dlq.stack": "s" * 3000}))
    assert small.value == b"" and "dlq.stack" not in small.headers
    assert small.headers[ORIGINAL_SIZE] == "5000" and small.headers[TRUNCATED] == "true"
    assert small.headers[ORIGINAL_SHA256] == hashlib.sha256(original).hexdigest()
    assert wire_size(small.key, small.value, small.headers) < 2_000


@pytest.mark.parametrize(("text", "limit", "clipped"), [
    ("abc", 5, "abc"), ("abcdef", 3, "abc"), ("ééé", 5, "éé"), ("ééé", 1, ""), ("", 0, ""),
])
def test_clip_cuts_on_a_character_boundary(text: str, limit: int, clipped: str) -> None:
    assert clip(text, limit) == clipped


def test_tail_keeps_the_end_on_a_character_boundary() -> None:
    assert tail("abcdef", 3) == "def"
    assert tail("ééé", 5) == "éé"


@given(value=st.binary(max_size=40_000), key=st.text(max_size=3_000),
       error=st.text(max_size=6_000), limit=st.integers(16_384, 60_000))
def test_any_dead_letter_fits_its_limit_and_is_a_prefix_of_the_original(
        value: bytes, key: str, error: str, limit: int) -> None:
    msg = fit(letter(value, key=key, **{"dlq.error": error}), limit)
    assert wire_size(msg.key, msg.value, msg.headers) <= limit
    assert value.startswith(msg.value)
    if msg.value != value:
        assert msg.headers[ORIGINAL_SHA256] == hashlib.sha256(value).hexdigest()
        assert msg.headers[ORIGINAL_SIZE] == str(len(value))


def test_librdkafka_takes_every_fitted_letter_at_produce() -> None:
    """The estimate is an upper bound of librdkafka's own count: its local
    check (no broker involved) accepts what fit() made, and refuses the
    original that did not fit."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.max.bytes": LIMIT,
                         "log_level": 0})
    try:
        for value, key, headers in [(b"x" * 999_000, "cs_1", 2), (b"y" * 1_500_000, "k" * 5000, 40),
                                    (b"z" * (LIMIT - 300), "cs_2", 1)]:
            msg = fit(letter(value, key=key, **{f"h{i}": "v" * 300 for i in range(headers)}), LIMIT)
            producer.produce(msg.topic, value=msg.value, key=msg.key.encode(),
                             headers=[(k, v.encode()) for k, v in msg.headers.items()])
        with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
            producer.produce("t", value=b"x" * 999_000, headers=[("dlq.stack", b"s" * 4000)])
    finally:
        producer.purge()
