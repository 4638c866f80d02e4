"""A message to produce, as plain data: its own module, without the Kafka
client, so that the modules that only build messages (the saga's outcomes,
the services' replies) do not load librdkafka."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
