"""``checkout-saga replay``: rewind consumer groups to a point in time.

Replay is safe by construction: every handler dedupes through its inbox, and
every saga transition is guarded, so messages handled again change nothing
that was already done; what was lost (a bug fixed since, a row restored from
a backup) is done now.

How:
1. ``--since`` is parsed (``beginning``, an RFC 3339 time, or ``15m``/``2h``
   ago) and a time in the future is refused: the embedded broker answers 0 to
   ``offsets_for_times`` for it, which would replay everything.
2. The groups are ``--group`` or, without it, every project group that reads
   the topic (``messaging.topics.GROUPS``).
3. Offsets can only be changed in an *empty* group (no live member; the
   broker refuses otherwise). The workers of those roles must be stopped
   first; ``--wait`` waits for the group to empty (a killed worker leaves
   after its session timeout).
4. Per partition, the target is the first offset at or after the time
   (``offsets_for_times``; at batch granularity on tansu, which only ever
   rewinds a little further: harmless). An answer of 0 is checked against the
   partition's first record, because tansu also answers 0 when nothing was
   appended since the time. A group is never moved *forward*: the new offset
   is the smaller of the target and what it had committed.
5. The offsets are altered; when the workers start again they reprocess.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from messaging.errors import CheckoutSagaError
from messaging.topic_reader import partitions_of
from messaging.topics import GROUPS

BEGINNING = ("beginning", "earliest", "start")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)\s*(ago)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_CLOCK_SKEW = timedelta(seconds=1)
_EMPTY = (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)


class ReplayError(CheckoutSagaError):
    """Something the operator must fix; the message says what."""


def parse_since(text: str, now: datetime) -> datetime | None:
    """The replay start; None means the beginning of the topic."""
    raw = text.strip()
    if raw.lower() in BEGINNING:
        return None
    rel = _RELATIVE.match(raw)
    if rel:
        since = now - timedelta(seconds=float(rel.group(1)) * _UNITS[rel.group(2).lower()])
    else:
        try:
            since = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ReplayError(
                f"cannot read --since {text!r}: give 'beginning', an RFC 3339 time such as "
                "2026-11-25T10:00:00Z, or a duration ago such as 15m or 2h"
            ) from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # a time without offset is taken as UTC
    if since > now + _CLOCK_SKEW:
        raise ReplayError(
            f"--since {since.isoformat()} is in the future (now is {now.isoformat()}): "
            "nothing to replay"
        )
    return since


def groups_for(topic: str, group: str | None) -> list[str]:
    if group:
        return [group]
    found = [g for g, topics in GROUPS.items() if topic in topics]
    if not found:
        readers = "; ".join(f"{g}: {', '.join(t)}" for g, t in GROUPS.items())
        raise ReplayError(f"no consumer group of the project reads {topic} ({readers}); "
                          "pass --group to name one")
    return found


def role_of(group: str) -> str:
    return group.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class PartitionPlan:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group never committed here (it starts from the earliest)
    target: int | None  # None: nothing was appended since the time
    new: int | None  # what is written; None: left as it is

    @property
    def to_replay(self) -> int | None:
        if self.new is None or self.committed is None:
            return None
        return max(0, self.committed - self.new)

    def as_json(self) -> dict[str, Any]:
        return {"group": self.group, "topic": self.topic, "partition": self.partition,
                "committed": self.committed, "target": self.target, "new": self.new,
                "to_replay": self.to_replay}


class Rewinder:
    """The broker side: group state, committed offsets, offsets by time, alter."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "checkout-saga.replay",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})

    def close(self) -> None:
        self._consumer.close()

    def active_groups(self, groups: list[str]) -> list[str]:
        futures = self._admin.describe_consumer_groups(groups, request_timeout=10)
        return [g for g, fut in futures.items() if fut.result().state not in _EMPTY]

    def wait_empty(self, groups: list[str], wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            busy = self.active_groups(groups)
            if not busy:
                return
            if time.monotonic() >= deadline:
                roles = ", ".join(sorted({role_of(g) for g in busy}))
                raise ReplayError(
                    f"consumer group(s) {', '.join(busy)} still have live members: offsets can "
                    f"only be moved in an empty group. Stop the workers of role(s) {roles} "
                    "(or pass --wait SECONDS to wait for them to stop), then replay, then start "
                    "them again."
                )
            time.sleep(0.25)

    def committed(self, group: str, topic: str, parts: list[int]) -> dict[int, int | None]:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])
        result = self._admin.list_consumer_group_offsets([request], request_timeout=10)[group].result()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None)
                for tp in result.topic_partitions if tp.topic == topic}

    def targets(self, topic: str, parts: list[int], since: datetime | None) -> dict[int, int | None]:
        if since is None:
            return {p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                    for p in parts}
        ms = int(since.timestamp() * 1000)
        found = self._consumer.offsets_for_times(
            [TopicPartition(topic, p, ms) for p in parts], timeout=10)
        out: dict[int, int | None] = {tp.partition: (tp.offset if tp.offset >= 0 else None)
                                      for tp in found}
        zeros = [p for p, o in out.items() if o == 0]
        for p, first_ms in self._first_timestamps(topic, zeros).items():
            if first_ms is not None and first_ms < ms:
                out[p] = None  # tansu's 0 for "nothing since then"
        return out

    def _first_timestamps(self, topic: str, parts: list[int]) -> dict[int, int | None]:
        """The timestamp of each partition's first record (None: empty partition)."""
        first: dict[int, int | None] = {p: None for p in parts}
        if not parts:
            return first
        reader = Consumer({"bootstrap.servers": self._bootstrap, "group.id": "checkout-saga.replay",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        try:
            ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in parts}
            waiting = {p for p in parts if ends[p] > 0}
            reader.assign([TopicPartition(topic, p, 0) for p in waiting])
            deadline = time.monotonic() + 10
            while waiting and time.monotonic() < deadline:
                for msg in reader.consume(100, 0.1):
                    partition = msg.partition()
                    if msg.error() is None and partition is not None and partition in waiting:
                        first[partition] = msg.timestamp()[1]
                        waiting.discard(partition)
        finally:
            reader.close()
        return first

    def plan(self, topic: str, groups: list[str], since: datetime | None) -> list[PartitionPlan]:
        parts = partitions_of(self._consumer, topic)
        targets = self.targets(topic, parts, since)
        plans = []
        for group in groups:
            committed = self.committed(group, topic, parts)
            for p in parts:
                target, had = targets.get(p), committed.get(p)
                # Never forward: a group that never committed here starts from the
                # earliest record anyway, and one already before the target stays.
                new = None if target is None or had is None or target >= had else target
                plans.append(PartitionPlan(group, topic, p, had, target, new))
        return plans

    def apply(self, plans: list[PartitionPlan]) -> None:
        by_group: dict[str, list[TopicPartition]] = {}
        for plan in plans:
            if plan.new is not None:
                by_group.setdefault(plan.group, []).append(
                    TopicPartition(plan.topic, plan.partition, plan.new))
        for group, tps in by_group.items():
            request = ConsumerGroupTopicPartitions(group, tps)
            try:
                result = self._admin.alter_consumer_group_offsets([request])[group].result()
            except KafkaException as exc:
                raise ReplayError(f"could not move the offsets of {group}: {exc}") from exc
            failed = [tp for tp in result.topic_partitions if tp.error is not None]
            if failed:
                raise ReplayError(
                    f"could not move the offsets of {group} ({failed[0].error}): a worker may have "
                    "joined meanwhile; stop it and run replay again"
                )


def replay(
    bootstrap: str,
    topics: list[str],
    since: datetime | None,
    group: str | None = None,
    wait: float = 0.0,
    dry_run: bool = False,
) -> list[PartitionPlan]:
    """Plan (and unless ``dry_run``, apply) the rewind of every group reading ``topics``."""
    rewinder = Rewinder(bootstrap)
    try:
        wanted = {t: groups_for(t, group) for t in topics}
        if not dry_run:
            rewinder.wait_empty(sorted({g for gs in wanted.values() for g in gs}), wait)
        plans = [p for t, gs in wanted.items() for p in rewinder.plan(t, gs, since)]
        if not dry_run:
            rewinder.apply(plans)
        return plans
    finally:
        rewinder.close()
