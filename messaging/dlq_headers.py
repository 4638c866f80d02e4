"""The headers a dead letter carries, named once: the worker and the outbox
write them, ``dlq list`` / ``dlq redrive`` and the metrics read them."""

from __future__ import annotations

from typing import Final

PREFIX: Final = "dlq."  # a redriven copy drops every header under it
ERROR: Final = "dlq.error"
ERROR_CLASS: Final = "dlq.error.class"
STAGE: Final = "dlq.stage"
STACK: Final = "dlq.stack"
SOURCE_TOPIC: Final = "dlq.source.topic"
SOURCE_PARTITION: Final = "dlq.source.partition"
SOURCE_OFFSET: Final = "dlq.source.offset"
# An outbox row Kafka refused, quarantined (beside its own headers if a dead letter).
OUTBOX_ERROR: Final = "dlq.outbox.error"
OUTBOX_QUARANTINED: Final = "dlq.outbox.quarantined"
REDRIVEN_FROM: Final = "dlq.redriven.from"
# A dead letter cut to fit the producer's limit says what the original was.
TRUNCATED: Final = "dlq.truncated"
ORIGINAL_SIZE: Final = "dlq.original.size"
ORIGINAL_SHA256: Final = "dlq.original.sha256"
ORIGINAL_KEY_SIZE: Final = "dlq.original.key.size"
