"""``checkout-saga chaos``: a storm of checkouts while the system is being broken.

On a stack of its own (embedded broker, PostgreSQL and Redis, which it
restarts), it runs N supervised worker processes per role, sends checkouts of
every kind (two of its SKUs hot, gated in Redis) over ``duration`` seconds
and meanwhile SIGKILLs random workers at random moments (the supervisor
restarts them), restarts PostgreSQL and Redis, and breaks the broker: with
``brokers=3`` (three Apache Kafka nodes, replication 3, two in sync) it SIGKILLs
a node and starts it again a few seconds later; with one node it restarts it.
Then it waits until every checkout has a result and the system is quiet, checks
each outcome against what its kind allows, and runs ``verify``. The figures go
into a ``ChaosReport``, with the goodput: the share of the checkouts that
succeed on a healthy system that did succeed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from checkout_saga import bootstrap
from checkout_saga.client import Cart, checkout_request
from checkout_saga.embedded.stack import EmbeddedStack
from checkout_saga.ops.supervisor import Supervisor, settings_env
from checkout_saga.ops.verify import VerifyOptions, verify
from checkout_saga.runtime import DDL, ROLES, prepare
from checkout_saga.seeding import seed_stock
from messaging.db import create_pool
from messaging.settings import Settings

log = logging.getLogger(__name__)

PRICE = 1999
SCARCE_UNITS = 5
PROMO_USES = 4
TIMEOUTS = {  # short, so that timeouts, retries and late answers happen within the run
    "CHECKOUT_PAYMENT_TIMEOUT_SECONDS": "3",
    "CHECKOUT_GATEWAY_LATE_ANSWER_SECONDS": "1",
    "CHECKOUT_STEP_TIMEOUT_SECONDS": "3",
}
# kind -> weight, and the outcomes it may have ("ok" = CheckoutSucceeded).
KINDS: dict[str, tuple[int, frozenset[str]]] = {
    "ok": (30, frozenset({"ok"})),
    "multi": (10, frozenset({"ok"})),
    "scarce": (12, frozenset({"ok", "OUT_OF_STOCK"})),
    "declined": (5, frozenset({"PAYMENT_DECLINED"})),
    "insufficient": (3, frozenset({"PAYMENT_DECLINED"})),
    "flaky": (5, frozenset({"ok"})),
    "timeout": (4, frozenset({"PAYMENT_TIMEOUT"})),
    "unknown_sku": (3, frozenset({"UNKNOWN_SKU"})),
    "price_changed": (3, frozenset({"PRICE_CHANGED"})),
    "promo": (10, frozenset({"ok", "PROMO_EXHAUSTED"})),
    "promo_invalid": (3, frozenset({"PROMO_INVALID"})),
    "duplicate": (6, frozenset({"ok"})),
    "garbage": (3, frozenset({"INVALID_REQUEST"})),
}
# Kinds that reach the payment step may also time out there while the payment
# worker (or PostgreSQL) is down: that is the contract's PAYMENT_TIMEOUT.
_REACH_PAYMENT = {"ok", "multi", "scarce", "flaky", "promo", "duplicate", "declined",
                  "insufficient"}
# Kinds that always succeed when nothing is broken: the goodput's denominator.
SHOULD_SUCCEED = frozenset(k for k, (_, allowed) in KINDS.items() if allowed == {"ok"})
BROKER_DOWN_SECONDS = 3.0  # how long a killed broker node stays down


@dataclass(frozen=True)
class ChaosPlan:
    checkouts: int = 150
    kills: int = 4
    per_role: int = 1
    postgres_restarts: int = 1
    redis_restarts: int = 1
    duration: float = 10.0
    seed: int = 7
    result_timeout: float = 120.0
    brokers: int = 1  # Apache Kafka nodes of the stack: 1, or 3 (replication 3, 2 in sync)
    broker_kills: int = 0  # a node of the cluster SIGKILLed, started again BROKER_DOWN_SECONDS on
    broker_restarts: int = 0  # every broker node stopped and started again


def check_plan(plan: ChaosPlan) -> None:
    """Refuse a plan that cannot run, in one sentence."""
    if plan.brokers not in (1, 3):
        raise ValueError(f"brokers must be 1 or 3, not {plan.brokers}")
    if plan.broker_kills and plan.brokers < 3:
        raise ValueError("killing a broker needs a cluster that outlives it: use brokers=3")


@dataclass
class ChaosReport:
    checkouts: int = 0
    results: int = 0
    missing: int = 0
    kills: int = 0
    restarts: int = 0
    postgres_restarts: int = 0
    redis_restarts: int = 0
    broker_kills: int = 0
    broker_restarts: int = 0
    goodput: float = 0.0  # succeeded / checkouts of the kinds that succeed when nothing breaks
    wrong_outcomes: int = 0
    breaches: int = 0
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    wrong: list[dict[str, str]] = field(default_factory=list)
    missing_sessions: list[str] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong_outcomes and not self.breaches

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Checkout:
    session: str
    kind: str
    payload: bytes
    repeat: bool = False


def plan_checkouts(n: int, run: str, rng: random.Random) -> list[Checkout]:
    kinds = [k for k, (weight, _) in KINDS.items() for _ in range(weight)]
    out = []
    for i in range(n):
        kind = rng.choice(kinds) if i >= len(KINDS) else list(KINDS)[i]  # each kind at least once
        sid = f"chaos-{run}-{i:05d}"
        sku = f"CH-{run}-{rng.randrange(4)}"
        items = [(sku, rng.randint(1, 3), PRICE)]
        token, promo = "tok_visa", None
        if kind == "multi":
            items = [(f"CH-{run}-{j}", rng.randint(1, 2), PRICE) for j in sorted(rng.sample(range(4), 3))]
        elif kind == "scarce":
            items = [(f"CH-{run}-SCARCE", 1, PRICE)]
        elif kind in ("declined", "insufficient", "flaky", "timeout"):
            token = {"declined": "tok_chargeDeclined", "insufficient": "tok_insufficientFunds",
                     "flaky": "tok_flaky", "timeout": "tok_timeout"}[kind]
        elif kind == "unknown_sku":
            items = [(f"CH-{run}-NOPE-{i}", 1, PRICE)]
        elif kind == "price_changed":
            items = [(sku, 1, PRICE - 500)]
        elif kind == "promo":
            promo = f"CH{run}".upper()
        elif kind == "promo_invalid":
            promo = f"NOPE{run}".upper()
        if kind == "garbage":
            payload = b'{"not": "a checkout", "subject": "' + sid.encode() + b'"}'
        else:
            payload = checkout_request(sid, items, token, promo_code=promo)
        out.append(Checkout(sid, kind, payload, repeat=kind == "duplicate"))
    return out


async def seed(settings: Settings, run: str) -> None:
    # Hot SKUs go through the Redis gate first: the scarce one and one of plenty.
    await seed_stock(settings, {**{f"CH-{run}-{j}": (PRICE, 100_000) for j in range(4)},
                                f"CH-{run}-SCARCE": (PRICE, SCARCE_UNITS)},
                     hot=(f"CH-{run}-SCARCE", f"CH-{run}-3"))
    if "promotions" in DDL:
        from services.promotions import store as promo_store
        from services.promotions.rules import Promo

        pool = await create_pool(settings.dsn_for("promotions"), 2)
        try:
            async with pool.acquire() as conn:
                await promo_store.create(conn, Promo(code=f"CH{run}".upper(), max_uses=PROMO_USES,
                                                     percent_off=10))
        finally:
            await pool.close()


async def wait_quiet(settings: Settings, timeout: float, settle: float = 1.0) -> dict[str, int]:
    """Until no saga is running, no outbox holds a row and no payment awaits the gateway."""
    pools = {s: await create_pool(settings.dsn_for(s), 2) for s in DDL}
    try:
        deadline, quiet_since = time.monotonic() + timeout, None
        while True:
            counts = {
                "running": await pools["saga"].fetchval(
                    "SELECT count(*) FROM saga.instances WHERE status NOT IN ('SUCCEEDED','FAILED')"),
                "pending_payments": await pools["payment"].fetchval(
                    "SELECT count(*) FROM payment.payments WHERE status = 'PENDING'"),
                "outbox": sum([await pools[s].fetchval(f"SELECT count(*) FROM {s}.outbox")
                               for s in DDL]),
            }
            now = time.monotonic()
            if any(counts.values()):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= settle:
                return counts
            if now > deadline:
                return counts
            await asyncio.sleep(0.2)
    finally:
        for pool in pools.values():
            await pool.close()


def outcome_of(event: Mapping[str, Any]) -> str:
    return "ok" if event["type"] == "CheckoutSucceeded" else str(event["data"]["reason"])


def goodput(checkouts: list[Checkout], results: Mapping[str, Mapping[str, Any]]) -> float:
    """The share of the checkouts that succeed on a healthy system that succeeded."""
    meant = [c for c in checkouts if c.kind in SHOULD_SUCCEED]
    won = sum(1 for c in meant if c.session in results and outcome_of(results[c.session]) == "ok")
    return round(won / len(meant), 4) if meant else 1.0


def check_outcomes(checkouts: list[Checkout], results: Mapping[str, Mapping[str, Any]]
                   ) -> list[dict[str, str]]:
    wrong = []
    for c in checkouts:
        event = results.get(c.session)
        if event is None:
            continue
        got = outcome_of(event)
        allowed = KINDS[c.kind][1] | ({"PAYMENT_TIMEOUT"} if c.kind in _REACH_PAYMENT else set())
        if got not in allowed:
            wrong.append({"session": c.session, "kind": c.kind, "outcome": got})
    return wrong


class Storm:
    """Sends the checkouts over ``duration`` seconds while chaos events fire on schedule.

    The events run in a thread of their own, one after another in time order: a restart that
    takes seconds (a Kafka node recovering its log) must not pause the cart, which keeps
    sending as a real one would.
    """

    def __init__(self, cart: Cart, checkouts: list[Checkout], duration: float,
                 events: list[tuple[float, str, Callable[[], None]]]) -> None:
        self._cart = cart
        self._checkouts = checkouts
        self._duration = duration
        self._events = sorted(events, key=lambda e: e[0])
        self.log: list[str] = []

    def run(self) -> None:
        start = time.monotonic()
        failures: list[BaseException] = []
        chaos = threading.Thread(target=self._fire_all, args=(start, failures), name="chaos",
                                 daemon=True)
        chaos.start()
        step = self._duration / max(1, len(self._checkouts))
        for i, c in enumerate(self._checkouts):
            self._cart.send(c.session, c.payload)
            if c.repeat:  # the same request again, as a retrying cart would
                self._cart.send(c.session, c.payload)
            pause = start + (i + 1) * step - time.monotonic()
            if pause > 0:
                self._cart.flush() if i % 20 == 0 else None
                time.sleep(pause)
        self._cart.flush()
        chaos.join()
        if failures:
            raise failures[0]

    def _fire_all(self, start: float, failures: list[BaseException]) -> None:
        try:
            for at, name, fire in self._events:
                time.sleep(max(0.0, start + at - time.monotonic()))
                began = time.monotonic() - start
                fire()
                self.log.append(f"{began:6.2f}s {name} (done at {time.monotonic() - start:.2f}s)")
                log.warning("chaos: %s", name)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the storm's thread
            failures.append(exc)


def settings_from(env: Mapping[str, str], **extra: Any) -> Settings:
    """The settings a worker given ``env`` would read (pydantic coerces the strings)."""
    values: dict[str, Any] = {k.lower(): v for k, v in env.items()}
    return Settings(**values, **extra)


def run_chaos(workdir: Path, plan: ChaosPlan, base_env: Mapping[str, str],
              on_progress: Callable[[str], None] | None = None) -> ChaosReport:
    started = time.monotonic()

    def say(message: str) -> None:
        if on_progress is not None:
            on_progress(f"{time.monotonic() - started:6.1f}s {message}")

    check_plan(plan)
    rng = random.Random(plan.seed)
    run = uuid.uuid4().hex[:6]
    report = ChaosReport(checkouts=plan.checkouts)
    stack = EmbeddedStack(workdir / "stack", broker="kafka" if plan.brokers > 1 else None,
                          kafka_nodes=plan.brokers)
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        found = stack.start()
        urls = settings_env(found.kafka_bootstrap, found.database_url, found.redis_url,
                            stack.client_settings)
        env = {**base_env, **urls, **TIMEOUTS, "CHECKOUT_DATA_DIR": str(workdir / "data")}
        settings = settings_from(urls | TIMEOUTS, checkout_data_dir=workdir / "data")
        say(f"stack up: {plan.brokers} Kafka node(s) ({stack.broker})")
        bootstrap.run(prepare(settings))
        bootstrap.run(seed(settings, run))
        supervisor = Supervisor(ROLES, plan.per_role, env, workdir / "workers")
        supervisor.start()
        watcher = threading.Thread(target=supervisor.run, args=(stop,), name="supervisor",
                                   daemon=True)
        watcher.start()
        cart = Cart(settings)
        try:
            say(f"{len(supervisor.children)} workers starting")
            _warm_up(cart, run)
            say("workers ready; the storm begins")
            checkouts = plan_checkouts(plan.checkouts, run, rng)
            events = _chaos_events(plan, rng, supervisor, stack, report)
            storm = Storm(cart, checkouts, plan.duration, events)
            storm.run()
            report.events = storm.log
            say("storm sent; waiting for every result")
            results = cart.results([c.session for c in checkouts], plan.result_timeout)
        finally:
            cart.close()
        report.results = len(results)
        report.missing = plan.checkouts - len(results)
        report.missing_sessions = [c.session for c in checkouts if c.session not in results][:20]
        report.outcomes = dict(sorted(Counter(outcome_of(e) for e in results.values()).items()))
        report.wrong = check_outcomes(checkouts, results)
        report.goodput = goodput(checkouts, results)
        report.wrong_outcomes = len(report.wrong)
        say("waiting for the system to be quiet")
        bootstrap.run(wait_quiet(settings, plan.result_timeout))
        say("verifying")
        checked = bootstrap.run(verify(settings, VerifyOptions(grace=1.0, topic_idle=0.5)))
        report.verify = checked.as_json()
        report.breaches = checked.breaches + sum(
            1 for c in checked.checks if c.status == "error")
        report.restarts = supervisor.restarts
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(60)
        stack.stop()
        report.seconds = round(time.monotonic() - started, 1)
    return report


def _warm_up(cart: Cart, run: str, timeout: float = 90.0) -> None:
    """Until one checkout makes the whole round trip (every group has joined)."""
    sid = f"chaos-{run}-warm"
    cart.send(sid, checkout_request(sid, [(f"CH-{run}-0", 1, PRICE)]))
    cart.flush()
    if sid not in cart.results([sid], timeout):
        raise RuntimeError(f"the workers did not answer a first checkout within {timeout:.0f}s")


def _chaos_events(plan: ChaosPlan, rng: random.Random, supervisor: Supervisor,
                  stack: EmbeddedStack, report: ChaosReport
                  ) -> list[tuple[float, str, Callable[[], None]]]:
    def at() -> float:
        return rng.uniform(0.05, 0.95) * plan.duration

    def kill() -> None:
        if supervisor.kill_one(rng) is not None:
            report.kills += 1

    def restart_postgres() -> None:
        stack.restart_postgres()
        report.postgres_restarts += 1

    def restart_redis() -> None:
        stack.restart_redis()
        report.redis_restarts += 1

    def restart_broker() -> None:
        stack.restart_kafka()
        report.broker_restarts += 1

    def broker_kill(node: int) -> list[tuple[float, str, Callable[[], None]]]:
        def kill_node() -> None:
            stack.kill_kafka_node(node)
            report.broker_kills += 1

        down = at()
        return [(down, f"SIGKILL Kafka node {node}", kill_node),
                (down + BROKER_DOWN_SECONDS, f"start Kafka node {node} again",
                 lambda: stack.start_kafka_node(node))]

    return ([(at(), "SIGKILL a worker", kill) for _ in range(plan.kills)]
            + [(at(), "restart PostgreSQL", restart_postgres) for _ in range(plan.postgres_restarts)]
            + [(at(), "restart Redis", restart_redis) for _ in range(plan.redis_restarts)]
            + [(at(), "restart the broker", restart_broker) for _ in range(plan.broker_restarts)]
            + [event for _ in range(plan.broker_kills)
               for event in broker_kill(rng.randint(1, plan.brokers))])
