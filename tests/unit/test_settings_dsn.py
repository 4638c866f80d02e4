"""Each service's schema is on its own DSN when one is set, else on DATABASE_URL."""

from __future__ import annotations

import pytest

from messaging.settings import Settings

SERVICES = ("inventory", "payment", "orders", "saga", "promotions")


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_dsn_overrides_database_url(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared/checkout")
    monkeypatch.setenv(f"{service.upper()}_DATABASE_URL", f"postgresql://{service}/own")
    settings = Settings()
    assert settings.dsn_for(service) == f"postgresql://{service}/own"
    others = [s for s in SERVICES if s != service]
    assert {settings.dsn_for(s) for s in others} == {"postgresql://shared/checkout"}


def test_without_its_own_dsn_a_service_uses_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared/checkout")
    for service in SERVICES:
        monkeypatch.delenv(f"{service.upper()}_DATABASE_URL", raising=False)
    assert Settings().dsn_for("promotions") == "postgresql://shared/checkout"
