"""``checkout-saga verify``: check the contract's guarantees over the live data.

Each check reads the records of the services (each schema through its own
DSN, so services living in separate databases are joined here, not in SQL)
and, for ``OrderConfirmed``, the ``orders.confirmed`` topic from the beginning
with a fresh consumer. A check reports every breach it finds (a sample of
them in full); the report is readable or JSON, and any breach makes the
command exit non-zero.

``grace`` is how long an effect may lag its cause before its absence counts
(an outbox row not yet relayed, a timer not yet fired, a late gateway answer
not yet booked). The database CHECK constraints that forbid an oversell are
not trusted here: the books are recomputed independently.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from messaging.db import create_pool
from messaging.settings import Settings
from messaging.topic_reader import Record, TopicUnavailable, idle_after_end, read_topic
from messaging.topics import CHECKOUT_REQUESTED, CHECKOUT_RESULTS, ORDERS_CONFIRMED
from schemas.contract import TOPIC_EVENT_TYPES, CheckoutRequested
from schemas.envelope import InvalidEvent, parse_event, session_from_key

LIVE_CHARGES = ("AUTHORIZED", "CAPTURED")


@dataclass(frozen=True)
class VerifyOptions:
    grace: float = 30.0  # seconds an effect may lag its cause
    max_saga_age: float = 900.0  # a saga running longer than this is past any deadline
    sample: int = 20  # breaches listed in full per check
    read_topics: bool = True
    topic_idle: float = 0.5


@dataclass
class CheckResult:
    name: str
    title: str
    status: str = "ok"  # ok | breach | skipped | error
    count: int = 0
    breaches: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status,
                "count": self.count, "breaches": self.breaches, "note": self.note}


@dataclass
class Report:
    checks: list[CheckResult]
    figures: dict[str, int]
    checked_at: str

    @property
    def ok(self) -> bool:
        return all(c.status in ("ok", "skipped") for c in self.checks)

    @property
    def breaches(self) -> int:
        return sum(c.count for c in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "breaches": self.breaches, "checked_at": self.checked_at,
                "figures": self.figures, "checks": [c.as_json() for c in self.checks]}


class Skip(Exception):
    """The check does not apply here (say why)."""


class Facts:
    """The records the checks look at, each loaded once, from its own schema's DSN."""

    def __init__(self, settings: Settings, options: VerifyOptions) -> None:
        self.settings = settings
        self.options = options
        self._pools: dict[str, asyncpg.Pool] = {}
        self._cache: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def pool(self, schema: str) -> asyncpg.Pool:
        dsn = self.settings.dsn_for(schema)
        if dsn not in self._pools:
            self._pools[dsn] = await create_pool(dsn, 2)
        return self._pools[dsn]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    async def fetch(self, schema: str, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = await self.pool(schema)
        return list(await pool.fetch(sql, *args))

    async def has_table(self, schema: str, table: str) -> bool:
        pool = await self.pool(schema)
        return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"))

    async def once(self, key: str, load: Callable[[], Awaitable[Any]]) -> Any:
        async with self._locks[key]:
            if key not in self._cache:
                self._cache[key] = await load()
            return self._cache[key]

    async def sagas(self) -> dict[str, asyncpg.Record]:
        async def load() -> dict[str, asyncpg.Record]:
            rows = await self.fetch("saga", """
                SELECT checkout_session_id AS session, status, deadline_at, finished_at,
                       created_at, state->'context'->>'order_id' AS order_id,
                       state->'failure'->>'reason' AS reason,
                       coalesce((state->>'stuck')::boolean, false) AS stuck,
                       extract(epoch FROM now() - deadline_at) AS overdue,
                       extract(epoch FROM now() - created_at) AS age,
                       extract(epoch FROM now() - finished_at) AS since_finished
                FROM saga.instances""")
            return {r["session"]: r for r in rows}
        return await self.once("sagas", load)  # type: ignore[no-any-return]

    async def orders(self) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.once("orders", lambda: self.fetch("orders", """
            SELECT order_id, checkout_session_id AS session, status, confirmed_at
            FROM orders.orders"""))
        return rows

    async def records(self, topic: str) -> list[Record]:
        if not self.options.read_topics:
            raise Skip("topics not read (--skip-topics)")
        return await self.once(f"topic:{topic}", lambda: asyncio.to_thread(  # type: ignore[no-any-return]
            read_topic, self.settings.kafka, topic,
            idle=idle_after_end(self.settings, self.options.topic_idle)))

    def old_enough(self, record: Record) -> bool:
        """Written more than ``grace`` seconds ago (its effects are due by now)."""
        age = datetime.now(UTC).timestamp() - record.timestamp_ms / 1000
        return age > self.options.grace

    async def confirmed_events(self) -> list[dict[str, Any]]:
        async def load() -> list[dict[str, Any]]:
            records = await self.records(ORDERS_CONFIRMED)
            out = []
            for r in records:
                try:
                    event = json.loads(r.value)
                    data = event["data"]
                    out.append({"id": event["id"], "session": data["checkout_session_id"],
                                "order_id": data["order_id"], "partition": r.partition,
                                "offset": r.offset})
                except (ValueError, KeyError, TypeError):
                    out.append({"id": None, "session": r.key, "order_id": None,
                                "partition": r.partition, "offset": r.offset})
            return out
        return await self.once("confirmed", load)  # type: ignore[no-any-return]


CheckFn = Callable[[Facts], Awaitable[list[dict[str, Any]]]]


# ---- the checks ----------------------------------------------------------------------


async def no_oversell(facts: Facts) -> list[dict[str, Any]]:
    rows = await facts.fetch("inventory", """
        SELECT sku, added, available, held, sold FROM inventory.products
        WHERE held + sold > added OR available < 0 OR held < 0 OR sold < 0""")
    return [{"sku": r["sku"], "added": r["added"], "held": r["held"], "sold": r["sold"],
             "available": r["available"], "oversold_by": r["held"] + r["sold"] - r["added"]}
            for r in rows]


async def stock_books_balance(facts: Facts) -> list[dict[str, Any]]:
    rows = await facts.fetch("inventory", """
        SELECT sku, added, available, held, sold FROM inventory.products
        WHERE available + held + sold <> added""")
    return [{"sku": r["sku"], "added": r["added"], "available": r["available"], "held": r["held"],
             "sold": r["sold"], "missing": r["added"] - r["available"] - r["held"] - r["sold"]}
            for r in rows]


async def held_matches_holds(facts: Facts) -> list[dict[str, Any]]:
    rows = await facts.fetch("inventory", """
        SELECT p.sku, p.held, coalesce(h.quantity, 0) AS in_holds
        FROM inventory.products p
        LEFT JOIN (SELECT sku, sum(quantity) AS quantity FROM inventory.holds
                   WHERE status = 'ACTIVE' GROUP BY sku) h ON h.sku = p.sku
        WHERE p.held <> coalesce(h.quantity, 0)""")
    return [{"sku": r["sku"], "held": r["held"], "active_holds": r["in_holds"]} for r in rows]


async def holds_end(facts: Facts) -> list[dict[str, Any]]:
    rows = await facts.fetch("inventory", """
        SELECT checkout_session_id, sku, quantity, expires_at,
               extract(epoch FROM now() - expires_at) AS overdue
        FROM inventory.holds
        WHERE status = 'ACTIVE' AND expires_at < now() - make_interval(secs => $1)
        ORDER BY expires_at""", facts.options.grace)
    return [{"checkout_session_id": r["checkout_session_id"], "sku": r["sku"],
             "quantity": r["quantity"], "expired_seconds_ago": round(float(r["overdue"]), 1)}
            for r in rows]


async def one_order_per_session(facts: Facts) -> list[dict[str, Any]]:
    sagas = await facts.sagas()
    by_session: dict[str, list[str]] = defaultdict(list)
    for order in await facts.orders():
        by_session[order["session"]].append(order["order_id"])
    out: list[dict[str, Any]] = []
    for session, ids in by_session.items():
        saga = sagas.get(session)
        if len(ids) > 1:
            out.append({"checkout_session_id": session, "problem": "several orders",
                        "order_ids": sorted(ids)})
        elif saga is None:
            out.append({"checkout_session_id": session, "problem": "order without a checkout",
                        "order_ids": ids})
        elif saga["order_id"] != ids[0]:
            out.append({"checkout_session_id": session, "problem": "order id differs from the saga's",
                        "order_ids": ids, "saga_order_id": saga["order_id"]})
    return out


async def one_charge_per_session(facts: Facts) -> list[dict[str, Any]]:
    grace = facts.options.grace
    payments = await facts.fetch("payment", """
        SELECT checkout_session_id AS session, idempotency_key, status,
               extract(epoch FROM now() - updated_at) AS age FROM payment.payments""")
    gateway = await facts.fetch("payment", """
        SELECT idempotency_key, status, amount,
               extract(epoch FROM now() - greatest(created_at, coalesce(answer_at, created_at)))
                 AS age
        FROM payment.gateway WHERE status = ANY($1::text[])""", list(LIVE_CHARGES))
    sagas = await facts.sagas()
    out: list[dict[str, Any]] = []
    live: dict[str, list[str]] = defaultdict(list)
    booked_keys = set()
    for p in payments:
        if p["status"] in LIVE_CHARGES:
            live[p["session"]].append(p["idempotency_key"])
            booked_keys.add(p["idempotency_key"])
            saga = sagas.get(p["session"])
            if saga is not None and saga["status"] == "FAILED" and float(p["age"]) > grace:
                out.append({"checkout_session_id": p["session"],
                            "problem": f"payment {p['status']} for a failed checkout"})
    for session, keys in live.items():
        if len(keys) > 1:
            out.append({"checkout_session_id": session, "problem": "several live payments",
                        "keys": sorted(keys)})
    for g in gateway:
        if g["idempotency_key"] not in booked_keys and float(g["age"]) > grace:
            out.append({"idempotency_key": g["idempotency_key"], "amount": g["amount"],
                        "problem": f"{g['status']} at the gateway with no live payment booked"})
    return out


async def sagas_end(facts: Facts) -> list[dict[str, Any]]:
    opts = facts.options
    rows = await facts.fetch("saga", """
        SELECT checkout_session_id, status, deadline_at, created_at,
               coalesce((state->>'stuck')::boolean, false) AS stuck,
               extract(epoch FROM now() - deadline_at) AS overdue,
               extract(epoch FROM now() - created_at) AS age
        FROM saga.instances
        WHERE status NOT IN ('SUCCEEDED', 'FAILED')
          AND (coalesce((state->>'stuck')::boolean, false) OR deadline_at IS NULL
               OR deadline_at < now() - make_interval(secs => $1)
               OR created_at < now() - make_interval(secs => $2))
        ORDER BY created_at""", opts.grace, opts.max_saga_age)
    out = []
    for r in rows:
        if r["stuck"]:
            why = ("stuck: its compensation was dead-lettered" if r["status"] == "COMPENSATING"
                   else "stuck: an action past the pivot was dead-lettered")
        elif r["deadline_at"] is None:
            why = "not ended and has no deadline"
        elif float(r["overdue"]) > opts.grace:
            why = f"deadline passed {float(r['overdue']):.0f}s ago"
        else:
            why = f"running for {float(r['age']):.0f}s"
        out.append({"checkout_session_id": r["checkout_session_id"], "status": r["status"],
                    "problem": why})
    return out


async def succeeded_has_order(facts: Facts) -> list[dict[str, Any]]:
    orders = {o["session"]: o for o in await facts.orders()}
    out = []
    for session, saga in (await facts.sagas()).items():
        if saga["status"] != "SUCCEEDED":
            continue
        order = orders.get(session)
        if order is None:
            out.append({"checkout_session_id": session, "problem": "CheckoutSucceeded but no order"})
        elif order["confirmed_at"] is None:
            out.append({"checkout_session_id": session, "order_id": order["order_id"],
                        "problem": f"CheckoutSucceeded but the order was never confirmed "
                                   f"({order['status']})"})
    return out


async def order_confirmed_once(facts: Facts) -> list[dict[str, Any]]:
    events = await facts.confirmed_events()
    sagas = await facts.sagas()
    ids: dict[str, set[str]] = defaultdict(set)
    order_ids: dict[str, set[str]] = defaultdict(set)
    out: list[dict[str, Any]] = []
    for e in events:
        if e["id"] is None:
            out.append({"partition": e["partition"], "offset": e["offset"],
                        "problem": "unreadable OrderConfirmed"})
            continue
        ids[e["session"]].add(e["id"])
        order_ids[e["session"]].add(e["order_id"])
    for session, seen in ids.items():
        saga = sagas.get(session)
        if len(seen) > 1:
            out.append({"checkout_session_id": session, "problem": f"{len(seen)} OrderConfirmed "
                        "events with different ids", "ids": sorted(seen)})
        if len(order_ids[session]) > 1:
            out.append({"checkout_session_id": session, "problem": "OrderConfirmed for several "
                        "orders", "order_ids": sorted(order_ids[session])})
        if saga is None or saga["status"] != "SUCCEEDED":
            status = "no saga" if saga is None else saga["status"]
            out.append({"checkout_session_id": session,
                        "problem": f"OrderConfirmed for a checkout that did not succeed ({status})"})
    for session, saga in sagas.items():
        if (saga["status"] == "SUCCEEDED" and session not in ids
                and saga["since_finished"] is not None
                and float(saga["since_finished"]) > facts.options.grace):
            out.append({"checkout_session_id": session,
                        "problem": "succeeded checkout without an OrderConfirmed"})
    return out


async def requests_handled(facts: Facts) -> list[dict[str, Any]]:
    """Every valid CheckoutRequested started a saga; every invalid one whose
    session id can be read (from its body, else its Kafka key) got an answer:
    its session's one result, unless that session's saga is still running
    (its result comes when it ends)."""
    sagas = await facts.sagas()
    answered = await _results(facts)
    out: list[dict[str, Any]] = []
    for record in await facts.records(CHECKOUT_REQUESTED):
        if not facts.old_enough(record):
            continue
        try:
            _, data = parse_event(record.value, TOPIC_EVENT_TYPES[CHECKOUT_REQUESTED])
        except InvalidEvent as bad:
            session = bad.session_id or session_from_key(record.key)
            saga = sagas.get(session) if session else None
            running = saga is not None and saga["status"] not in ("SUCCEEDED", "FAILED")
            if session and session not in answered and not running:
                out.append({"checkout_session_id": session, "partition": record.partition,
                            "offset": record.offset, "problem": "invalid request never answered"})
            continue
        assert isinstance(data, CheckoutRequested)
        if data.checkout_session_id not in sagas:
            out.append({"checkout_session_id": data.checkout_session_id,
                        "partition": record.partition, "offset": record.offset,
                        "problem": "valid request that started no saga"})
    return out


@dataclass(frozen=True)
class Published:
    id: str
    type: str  # CheckoutSucceeded | CheckoutFailed
    reason: str | None  # CheckoutFailed's
    old: bool  # published more than ``grace`` ago


async def _results(facts: Facts) -> dict[str, list[Published]]:
    """Per session, every result published (republications included)."""
    async def load() -> dict[str, list[Published]]:
        out: dict[str, list[Published]] = defaultdict(list)
        for record in await facts.records(CHECKOUT_RESULTS):
            try:
                event = json.loads(record.value)
                out[event["data"]["checkout_session_id"]].append(
                    Published(event["id"], event["type"], event["data"].get("reason"),
                              facts.old_enough(record)))
            except (ValueError, KeyError, TypeError):
                continue
        return out
    return await facts.once("results", load)  # type: ignore[no-any-return]


def _described(result: Published) -> str:
    return result.type + (f" {result.reason}" if result.reason else "")


async def results_published(facts: Facts) -> list[dict[str, Any]]:
    """Every ended saga told the cart its own result, under one id however
    often it was republished, and nothing else; no result without a saga."""
    results = await _results(facts)
    sagas = await facts.sagas()
    out: list[dict[str, Any]] = []
    expected = {"SUCCEEDED": "CheckoutSucceeded", "FAILED": "CheckoutFailed"}
    for session, saga in sagas.items():
        status = saga["status"]
        if status not in expected:
            continue
        seen = results.get(session, [])
        wrong = sorted({_described(r) for r in seen if r.type != expected[status]
                        or saga["reason"] is not None and r.reason != saga["reason"]})
        if wrong:
            out.append({"checkout_session_id": session, "status": status,
                        "problem": f"another result was published too: {', '.join(wrong)}"})
        ids = {r.id for r in seen}
        if len(ids) > 1:
            out.append({"checkout_session_id": session, "status": status,
                        "problem": f"{len(ids)} results with different ids"})
        if (not seen and saga["since_finished"] is not None
                and float(saga["since_finished"]) > facts.options.grace):
            out.append({"checkout_session_id": session, "status": status,
                        "problem": "ended but its result was never published"})
    # Old enough only: a saga that began after the sagas were read may have answered since.
    for session in sorted(s for s in results.keys() - sagas.keys()
                          if any(r.old for r in results[s])):
        out.append({"checkout_session_id": session, "status": None,
                    "problem": "a result was published for a session with no saga"})
    return out


async def promo_counters(facts: Facts) -> list[dict[str, Any]]:
    if not await facts.has_table("promotions", "codes"):
        raise Skip("no promotions schema here")
    rows = await facts.fetch("promotions", """
        SELECT c.code, c.max_uses, c.taken, coalesce(u.taken, 0) AS ledger
        FROM promotions.codes c
        LEFT JOIN (SELECT code, count(*) AS taken FROM promotions.usages
                   WHERE status = 'TAKEN' GROUP BY code) u ON u.code = c.code""")
    out = []
    for r in rows:
        if r["taken"] != r["ledger"]:
            out.append({"code": r["code"], "counter": r["taken"], "ledger": r["ledger"],
                        "problem": "use counter differs from the usage ledger"})
        if r["ledger"] > r["max_uses"]:
            out.append({"code": r["code"], "max_uses": r["max_uses"], "ledger": r["ledger"],
                        "problem": "more uses than allowed"})
    return out


CHECKS: tuple[tuple[str, str, CheckFn], ...] = (
    ("no-oversell", "No oversell: held + sold <= stock ever added, per SKU", no_oversell),
    ("stock-books", "Stock books balance: available + held + sold = added", stock_books_balance),
    ("held-matches-holds", "Each SKU's held count equals its active holds", held_matches_holds),
    ("holds-end", "Every hold ended or is still inside its TTL", holds_end),
    ("one-order", "At most one order per checkout session, the saga's own", one_order_per_session),
    ("one-charge", ("At most one live (authorized or captured) payment per session, none for "
                    "a failed checkout, none the books do not know"), one_charge_per_session),
    ("sagas-end", "Every saga ended or is inside its deadline", sagas_end),
    ("succeeded-has-order", "Every succeeded checkout has a confirmed order", succeeded_has_order),
    ("order-confirmed-once", ("One OrderConfirmed (by id) per succeeded checkout, none for "
                              "others"), order_confirmed_once),
    ("promo-counters", "Promo use counters equal the usage ledger", promo_counters),
    ("requests-handled", ("Every valid checkout request started a saga; every readable "
                          "invalid one was answered"), requests_handled),
    ("results-published", ("Every ended saga published its result, under one id, and only "
                           "that one"), results_published),
)


async def _run_check(facts: Facts, name: str, title: str, fn: CheckFn) -> CheckResult:
    result = CheckResult(name, title)
    try:
        found = await fn(facts)
    except Skip as skip:
        result.status, result.note = "skipped", str(skip)
        return result
    except (TopicUnavailable, OSError, asyncpg.PostgresError, RuntimeError) as exc:
        result.status, result.note = "error", f"could not check: {exc}"
        return result
    result.count = len(found)
    result.breaches = found[: facts.options.sample]
    result.status = "breach" if found else "ok"
    return result


async def figures(facts: Facts) -> dict[str, int]:
    sagas = await facts.sagas()
    out = {"sagas": len(sagas), "orders": len(await facts.orders())}
    for status in ("SUCCEEDED", "FAILED", "RUNNING", "COMPENSATING"):
        out[f"sagas_{status.lower()}"] = sum(1 for s in sagas.values() if s["status"] == status)
    return out


async def verify(settings: Settings, options: VerifyOptions) -> Report:
    facts = Facts(settings, options)
    try:
        results = [await _run_check(facts, name, title, fn) for name, title, fn in CHECKS]
        try:
            numbers = await figures(facts)
        except (OSError, asyncpg.PostgresError):
            numbers = {}
    finally:
        await facts.close()
    return Report(results, numbers, datetime.now(UTC).isoformat())
