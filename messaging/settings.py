"""Process settings, read once from the environment into a frozen object.

Handlers never read ``os.environ``: the composition root builds one
``Settings`` and passes it (or the values it needs) down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.limits import MAX_HOLD_TTL_SECONDS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="")

    # Connections (contract names). None means "start an embedded server".
    kafka_bootstrap_servers: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    inventory_database_url: str | None = None
    payment_database_url: str | None = None
    orders_database_url: str | None = None
    saga_database_url: str | None = None
    promotions_database_url: str | None = None

    # Contract timings.
    checkout_hold_ttl_seconds: float = Field(default=900.0, gt=0, le=MAX_HOLD_TTL_SECONDS)
    checkout_payment_timeout_seconds: float = Field(default=30.0, gt=0)

    # Our own knobs; every one has a production-safe default.
    checkout_step_timeout_seconds: float = Field(default=20.0, gt=0)
    checkout_compensation_max_attempts: int = Field(default=8, ge=1)
    # Sends of an unanswered action before the saga gives up (compensates, or
    # past the pivot dead-letters it and waits for an operator).
    checkout_step_max_attempts: int = Field(default=8, ge=1)
    # The simulator's "never answers" token answers this long after the
    # payment timeout, so a late authorization can be seen and voided.
    checkout_gateway_late_answer_seconds: float = Field(default=2.0, ge=0)
    checkout_partitions: int = Field(default=8, ge=1)
    checkout_replication_factor: int = Field(default=1, ge=1)
    # Topic creation (`checkout-saga topics create`). -1 keeps records forever.
    # Dead letters wait for a person, so they are kept longer than traffic.
    checkout_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    checkout_dlq_retention_ms: int = Field(default=30 * 24 * 3600 * 1000, ge=-1)
    # None leaves the broker's default (min.insync.replicas) in force.
    checkout_min_insync_replicas: int | None = Field(default=None, ge=1)
    # Classic group protocol: a dead member's partitions move after the session timeout
    # (6 s is the broker's default minimum).  Fetches wait up to fetch.wait.max.ms on the
    # broker, which answers as soon as data arrives (librdkafka's default, 500 ms).
    checkout_kafka_session_timeout_ms: int = Field(default=6000, gt=0)
    checkout_kafka_heartbeat_interval_ms: int = Field(default=2000, gt=0)
    checkout_kafka_fetch_wait_max_ms: int = Field(default=500, ge=0)
    # "consumer" is the group protocol of KIP-848 (Kafka 4): the broker assigns partitions,
    # incrementally, and sets the session and heartbeat timings itself.
    checkout_kafka_group_protocol: Literal["classic", "consumer"] = "classic"
    # Apache Kafka's high watermarks are exact, so a topic is read to its end at once; tansu
    # (the fallback) under-reports them, and readers wait for the topic to be idle too.
    checkout_kafka_exact_watermarks: bool = True
    checkout_kafka_fetch_min_bytes: int = Field(default=1, ge=1)
    checkout_kafka_linger_ms: float = Field(default=2, ge=0)
    # The producer's message.max.bytes (librdkafka's default): every dead
    # letter is cut to fit it (messaging/dead_letters.py).
    checkout_kafka_message_max_bytes: int = Field(default=1_000_000, ge=16_384, le=1_000_000_000)
    checkout_consumer_batch: int = 500
    checkout_key_concurrency: int = 64
    # Lanes per consumed batch, each one transaction for many messages
    # (0: one transaction per message, the slow path every lane falls back to).
    checkout_consumer_lanes: int = Field(default=2, ge=0)
    # Batches a consumer handles at once (different keys only), and how often
    # it commits offsets (a redelivery after a crash is absorbed by the inbox).
    checkout_consumer_inflight_batches: int = Field(default=1, ge=1)
    checkout_consumer_commit_interval_ms: int = Field(default=200, ge=0)
    checkout_db_pool_size: int = 12
    # A message failing transiently is dead-lettered only after this many
    # failures over this long, and only while other messages on its consumer
    # succeed (an outage is waited out): messaging/retry.py.
    checkout_retry_budget_attempts: int = Field(default=10, ge=1)
    checkout_retry_budget_seconds: float = Field(default=60.0, ge=0)
    # `up` is gone this long after SIGTERM whatever it was doing: the batch in
    # hand is abandoned uncommitted, what is sendable flushed, pools closed.
    checkout_stop_timeout_seconds: float = Field(default=9.0, ge=1, le=300)
    checkout_data_dir: Path = Path(".checkout-saga")
    # The embedded broker (checkout_saga/embedded/stack.py): None takes Apache Kafka where Java 17+ is
    # found, tansu (a stand-in) where not; the jars live in checkout_kafka_home (None: a cache
    # folder, ~/.cache/checkout-saga/kafka-<version>).
    checkout_embedded_broker: Literal["kafka", "tansu"] | None = None
    checkout_kafka_home: Path | None = None
    checkout_sweep_interval_seconds: float = 1.0
    # Hot SKUs: a cold SKU with this many reservations inside one window is
    # marked hot and gated in Redis from then on (0: only operators mark).
    checkout_hot_threshold: int = Field(default=200, ge=0)
    checkout_hot_window_seconds: float = Field(default=1.0, gt=0)
    # How often the timers compare hot counters in Redis with PostgreSQL.
    checkout_hot_reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    checkout_timer_interval_seconds: float = 0.2
    checkout_log_level: str = "INFO"
    # Observability (messaging.metrics / tracing / logs). Metrics port 0
    # takes a free port (logged, and written to <data dir>/metrics/<pid>.json);
    # -1 turns the metrics server off.
    checkout_log_format: str = Field(default="json", pattern="^(json|text)$")
    checkout_metrics_host: str = "127.0.0.1"
    checkout_metrics_port: int = Field(default=0, ge=-1, le=65535)
    checkout_metrics_sample_seconds: float = Field(default=2.0, gt=0)
    checkout_metrics_lag_interval_ms: int = Field(default=5000, ge=100)
    checkout_otel_exporter: str = Field(default="none", pattern="^(none|console|otlp)$")
    checkout_otel_sample_ratio: float = Field(default=1.0, ge=0, le=1)

    def dsn_for(self, service: str) -> str:
        """The DSN of one service's schema: its own URL, else DATABASE_URL."""
        own: Any = getattr(self, f"{service}_database_url", None)
        dsn = own or self.database_url
        if not dsn:
            raise RuntimeError(f"no database URL for {service}: set DATABASE_URL")
        return str(dsn)

    @property
    def kafka(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS")
        return self.kafka_bootstrap_servers
