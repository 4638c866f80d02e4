"""`checkout-saga bench inventory` runs its four scenarios on a scratch
database of the session's servers, and none of them sells more than it has."""

from __future__ import annotations

from helpers import cli_json

from checkout_saga.dev.bench_inventory import BASELINE, run_bench
from messaging.settings import Settings


async def test_bench_runs_every_scenario_without_overselling(stack) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=stack.env["DATABASE_URL"], redis_url=stack.env["REDIS_URL"])
    report = await run_bench(settings, attempts=200, units=20, concurrency=8, cold_skus=20)
    by_name = {r["scenario"]: r for r in report["results"]}
    assert list(by_name) == ["cold", "hot, PostgreSQL guard", BASELINE, "hot, Redis gate"]
    assert by_name["cold"]["held"] == 200
    for name in ("hot, PostgreSQL guard", BASELINE, "hot, Redis gate"):
        assert by_name[name]["held"] == 20, by_name[name]
    assert by_name[BASELINE]["ratio"] == 1.0
    assert all(r["per_second"] > 0 for r in report["results"])


def test_bench_command_prints_json(env) -> None:  # type: ignore[no-untyped-def]
    report = cli_json(env, "bench", "inventory", "--attempts", "40", "--units", "5",
                      "--concurrency", "4", "--cold-skus", "4")
    assert [r["held"] for r in report["results"]] == [40, 5, 5, 5]
