"""The analytics app's own knobs (``CHECKOUT_ANALYTICS_*``), read once.

Connections come from the project's ``Settings`` (the contract's variables).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_prefix="CHECKOUT_ANALYTICS_")

    # The faust app id: its consumer group and the prefix of its changelog topics.
    id: str = "checkout-saga-analytics"
    host: str = "127.0.0.1"
    port: int = Field(default=6066, ge=1, le=65535)
    # Outcome, reason, latency and order-event tables: tumbling windows of this size.
    window_seconds: float = Field(default=60.0, gt=0)
    # How long a window is kept (faust expires older ones).
    retention_seconds: float = Field(default=3 * 3600.0, gt=0)
    # Demand per SKU is counted in short windows so a spike is seen quickly.
    hot_window_seconds: float = Field(default=10.0, gt=0)
    # Checkout requests per minute naming a SKU at which it is marked hot.
    hot_per_minute: float = Field(default=600.0, gt=0)
    # A RUNNING or COMPENSATING saga untouched this long shows as stuck.
    stuck_after_seconds: float = Field(default=60.0, gt=0)
    # The dashboard page reloads its data this often.
    refresh_ms: int = Field(default=2000, ge=200)
    # A request and its result are matched within this span (latency, dedupe).
    session_window_seconds: float = Field(default=600.0, gt=0)
