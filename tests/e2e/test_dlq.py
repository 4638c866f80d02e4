"""Dead letters on the shared stack: listed readably, put back once.

Only this test's own entries are redriven (`--key`), since other tests share
the dead-letter topics.
"""

from __future__ import annotations

import json
import time

from conftest import poll_until
from helpers import Bus, checkout_event, cli, uid
from ops_helpers import invoke

from messaging.messages import event_message
from messaging.topics import SAGA_REPLIES
from schemas.internal import REPLY_TYPE, CommandReply


def entries(env: dict[str, str], topic: str, key: str, count: int = 1,
            timeout: float = 20.0) -> list[dict]:  # type: ignore[type-arg]
    end = time.monotonic() + timeout
    while True:
        found = [e for e in json.loads(invoke(env, "dlq", "list", topic, "--json").stdout)
                 if e["key"] == key]
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.3)


def test_poison_is_dead_lettered_with_its_error_and_source_and_listed(workers, bus: Bus, env) -> None:
    sid = uid("poison")
    garbage = b'{"not": "a checkout", "subject": "' + sid.encode() + b'"}'
    bus.send("checkout.requested", sid, garbage)
    bus.flush()
    assert bus.result(sid)["data"]["reason"] == "INVALID_REQUEST"
    # The bus reads the topic from its start: a busy one takes more than one short poll.
    sent = poll_until(lambda: next(
        (r for r in bus.poll("checkout.requested") if r["key"] == sid), None), timeout=30)
    assert sent is not None, "the request never showed up on checkout.requested"

    [entry] = entries(env, "checkout.requested", sid)
    assert entry["dlq_topic"] == "checkout.requested.dlq" and entry["offset"] >= 0
    assert "invalid CloudEvents envelope" in entry["error"] and entry["stage"] == "parse"
    assert (entry["source_topic"], entry["source_partition"], entry["source_offset"]) == (
        "checkout.requested", sent["partition"], sent["offset"])
    assert entry["redriven"] is False and sid in entry["value_preview"]
    with_stack = [e for e in json.loads(invoke(env, "dlq", "list", "checkout.requested.dlq",
                                               "--json", "--stack").stdout) if e["key"] == sid]
    assert "InvalidEvent" in with_stack[0]["stack"]
    table = invoke(env, "dlq", "list", "checkout.requested").stdout
    assert "checkout.requested.dlq" in table and "invalid CloudEvents" in table


def test_redrive_puts_each_dead_letter_back_once(workers, bus: Bus, env) -> None:
    """A reply that came before its saga is dead-lettered; once the saga exists,
    redriving it delivers it (as a duplicate, ignored) exactly once."""
    sid, sku = uid("early"), uid("SKU-DLQ")
    early = event_message(SAGA_REPLIES, REPLY_TYPE, "urn:test:stray", sid,
                          CommandReply(checkout_session_id=sid, command="ReserveStock", ok=True))
    bus.send(SAGA_REPLIES, sid, early.value)
    bus.flush()
    [entry] = entries(env, SAGA_REPLIES, sid)
    assert "no saga" in entry["error"] and entry["source_topic"] == SAGA_REPLIES

    cli(env, "stock", "set", sku, "--price", "100", "--quantity", "5")
    bus.send("checkout.requested", sid, checkout_event(sid, [(sku, 1, 100)]))
    bus.flush()
    assert bus.result(sid)["type"] == "CheckoutSucceeded"

    dry = json.loads(invoke(env, "dlq", "redrive", SAGA_REPLIES, "--key", sid, "--dry-run",
                            "--json").stdout)
    assert dry["redriven"] == 1 and dry["dry_run"]
    first = json.loads(invoke(env, "dlq", "redrive", SAGA_REPLIES, "--key", sid, "--json").stdout)
    assert first["redriven"] == 1 and first["entries"][0]["offset"] == entry["offset"]
    second = json.loads(invoke(env, "dlq", "redrive", SAGA_REPLIES, "--key", sid, "--json").stdout)
    assert second == {"redriven": 0, "already_redriven": 1, "truncated_not_redriven": 0,
                      "entries": [], "dry_run": False}
    [listed] = entries(env, SAGA_REPLIES, sid)
    assert listed["redriven"] and listed["redriven_at"]

    # Back on its source topic exactly once, marked as redriven, and handled.
    end = time.monotonic() + 20
    while time.monotonic() < end:
        again = [r for r in bus.poll(SAGA_REPLIES) if r["key"] == sid
                 and "dlq.redriven.from" in r["headers"]]
        ignored = [s for s in json.loads(invoke(env, "saga", "show", sid, "--json").stdout)["steps"]
                   if s["kind"] == "ignored" and "ReserveStock" in s["detail"]]
        if again and ignored:
            break
        time.sleep(0.3)
    assert len(again) == 1
    assert again[0]["headers"]["dlq.redriven.from"] == (
        f"{SAGA_REPLIES}.dlq:{entry['partition']}:{entry['offset']}")
    assert len(ignored) == 1
    assert len(entries(env, SAGA_REPLIES, sid, timeout=0)) == 1  # not dead-lettered again


def test_redrive_by_offset_takes_the_partition_too(workers, bus: Bus, env) -> None:
    """Every partition has an offset 0: an offset alone would pick one letter per partition."""
    sid = uid("stray")
    stray = event_message(SAGA_REPLIES, REPLY_TYPE, "urn:test:stray", sid,
                          CommandReply(checkout_session_id=sid, command="ReserveStock", ok=True))
    bus.send(SAGA_REPLIES, sid, stray.value)
    bus.flush()
    [entry] = entries(env, SAGA_REPLIES, sid)

    alone = invoke(env, "dlq", "redrive", SAGA_REPLIES, "--offset", str(entry["offset"]), code=2)
    [line] = alone.stderr.strip().splitlines()
    assert "--offset needs --partition" in line

    def chosen(partition: int) -> list[dict[str, object]]:
        out = json.loads(invoke(env, "dlq", "redrive", SAGA_REPLIES, "--partition", str(partition),
                                "--offset", str(entry["offset"]), "--dry-run", "--json").stdout)
        return list(out["entries"])

    assert [(e["partition"], e["offset"], e["key"]) for e in chosen(entry["partition"])] == [
        (entry["partition"], entry["offset"], sid)]
    other = 1 - int(entry["partition"])  # the suite's topics have two partitions
    assert all(e["partition"] == other and e["key"] != sid for e in chosen(other))
