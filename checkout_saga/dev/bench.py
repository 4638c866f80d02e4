"""``checkout-saga bench``: the end-to-end benchmark, with its own baseline.

It drives a mix of checkouts (mostly successes, some declines and
out-of-stock) through the real topics against worker processes, and in the
same invocation measures a raw baseline on the same servers: the bare
PostgreSQL transactions one checkout needs, through asyncpg, and a bare Kafka
produce-to-consume round trip. Our figures are printed as ratios of those,
because absolute numbers on these machines are noise.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition

from checkout_saga.client import checkout_request
from checkout_saga.runtime import ROLES, prepare
from checkout_saga.seeding import seed_stock
from messaging.db import create_pool
from messaging.kafka import ensure_topics
from messaging.settings import Settings
from messaging.topics import CHECKOUT_REQUESTED, CHECKOUT_RESULTS

STEPS_PER_CHECKOUT = 6
BASELINE_TOPIC = "bench.baseline"


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


# ---- the workload --------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    sent: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    done: int = 0
    started: float = 0.0
    finished: list[float] = field(default_factory=list)  # perf_counter at each result


def windows(run: Run, seconds: float = 5.0) -> list[float]:
    """Results per second in each ``seconds`` window from the first send: a
    sustained rate stays flat, a system that slows as it fills does not."""
    if not run.finished:
        return []
    counts = [0] * (int((max(run.finished) - run.started) // seconds) + 1)
    for at in run.finished:
        counts[int((at - run.started) // seconds)] += 1
    return [round(c / seconds, 1) for c in counts]


def _mix(rng: random.Random) -> str:
    roll = rng.random()
    return "declined" if roll < 0.05 else "out_of_stock" if roll < 0.10 else "ok"


def _payload(run_id: str, sid: str, kind: str, rng: random.Random) -> bytes:
    if kind == "out_of_stock":
        return checkout_request(sid, [(f"BENCH-{run_id}-GONE", 1, 500)])
    token = "tok_chargeDeclined" if kind == "declined" else "tok_visa"
    return checkout_request(sid, [(f"BENCH-{run_id}-{rng.randrange(50)}", 1, 500)], token)


def drive(settings: Settings, run: Run, duration: float, rate: float | None, window: int,
          progress: Callable[[int], None] | None = None) -> float:
    """Send checkouts for ``duration`` seconds (at ``rate``/s, or as fast as the
    in-flight ``window`` allows) and wait for every result; returns elapsed s."""
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 2, "acks": "all",
                         "enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"bench-{run.run_id}",
                         "enable.auto.commit": False,
                         "fetch.wait.max.ms": settings.checkout_kafka_fetch_wait_max_ms})
    parts = consumer.list_topics(CHECKOUT_RESULTS, timeout=10).topics[CHECKOUT_RESULTS].partitions
    ends = [consumer.get_watermark_offsets(TopicPartition(CHECKOUT_RESULTS, p), timeout=10)[1]
            for p in parts]
    consumer.assign([TopicPartition(CHECKOUT_RESULTS, p, 0) for p, _e in zip(parts, ends)])
    stop_reading = threading.Event()

    def read() -> None:
        import json

        while not stop_reading.is_set():
            # consume(n, timeout) would wait out its timeout unless n results
            # came, adding up to that much to every latency measured.
            first = consumer.poll(0.05)
            for msg in [] if first is None else [first, *consumer.consume(999, 0)]:
                if msg.error():
                    continue
                now = time.perf_counter()
                event = json.loads(msg.value())
                sid = event.get("subject")
                sent = run.sent.get(sid)
                if sent is None or sid in run.kinds and run.kinds[sid] == "done":
                    continue
                run.kinds[sid] = "done"
                run.latency_ms.append((now - sent) * 1000)
                run.finished.append(now)
                key = event["type"] if event["type"] == "CheckoutSucceeded" else \
                    f"CheckoutFailed/{event['data']['reason']}"
                run.outcomes[key] = run.outcomes.get(key, 0) + 1
                run.done += 1
                if progress:
                    progress(run.done)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    rng = random.Random(11)
    started = run.started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < duration:
        if rate is not None:
            ahead = started + i / rate - time.perf_counter()
            if ahead > 0:  # one reading of the clock: a second one may already be past `due`
                time.sleep(min(0.01, ahead))
                continue
        elif i - run.done >= window:
            time.sleep(0.002)
            continue
        sid = f"bench-{run.run_id}-{i:07d}"
        kind = _mix(rng)
        payload = _payload(run.run_id, sid, kind, rng)
        run.kinds[sid] = kind
        run.sent[sid] = time.perf_counter()
        while True:
            try:
                producer.produce(CHECKOUT_REQUESTED, key=sid.encode(), value=payload)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
        i += 1
    producer.flush(30)
    deadline = time.perf_counter() + 120
    while run.done < len(run.sent) and time.perf_counter() < deadline:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop_reading.set()
    reader.join()
    consumer.close()
    return elapsed


async def seed(settings: Settings, run_id: str) -> None:
    await seed_stock(settings, {**{f"BENCH-{run_id}-{i}": (500, 10_000_000) for i in range(50)},
                                f"BENCH-{run_id}-GONE": (500, 0)})


async def step_latencies(settings: Settings, run_id: str) -> dict[str, dict[str, float]]:
    """Per step: time from its command being sent to its reply being handled."""
    conn = await asyncpg.connect(settings.dsn_for("saga"))
    try:
        rows = await conn.fetch(
            """
            SELECT step, kind, checkout_session_id, at FROM saga.step_log
            WHERE checkout_session_id LIKE $1 AND kind IN ('command', 'succeeded')
            ORDER BY id
            """,
            f"bench-{run_id}-%",
        )
    finally:
        await conn.close()
    sent: dict[tuple[str, str], Any] = {}
    samples: dict[str, list[float]] = {}
    for r in rows:
        key = (r["checkout_session_id"], r["step"])
        if r["kind"] == "command":
            sent.setdefault(key, r["at"])
        elif key in sent:
            samples.setdefault(r["step"], []).append((r["at"] - sent[key]).total_seconds() * 1000)
    return {step: percentiles(v) for step, v in samples.items()}


async def check_guarantees(settings: Settings, run: Run) -> dict[str, Any]:
    conn = await asyncpg.connect(settings.dsn_for("inventory"))
    try:
        oversold = await conn.fetchval(
            "SELECT count(*) FROM inventory.products WHERE sku LIKE $1 AND held + sold > added",
            f"BENCH-{run.run_id}-%",
        )
        held = await conn.fetchval(
            "SELECT count(*) FROM inventory.holds WHERE checkout_session_id LIKE $1 AND status = 'ACTIVE'",
            f"bench-{run.run_id}-%",
        )
    finally:
        await conn.close()
    conn = await asyncpg.connect(settings.dsn_for("saga"))
    try:
        running = await conn.fetchval(
            "SELECT count(*) FROM saga.instances WHERE checkout_session_id LIKE $1 "
            "AND status NOT IN ('SUCCEEDED', 'FAILED')",
            f"bench-{run.run_id}-%",
        )
    finally:
        await conn.close()
    missing = len(run.sent) - run.done
    return {"oversold_skus": oversold, "holds_left": held, "sagas_not_terminal": running,
            "results_missing": missing,
            "ok": oversold == 0 and held == 0 and running == 0 and missing == 0}


# ---- the baseline ----------------------------------------------------------------------


async def baseline_postgres(settings: Settings, seconds: float = 3.0, clients: int = 16) -> float:
    """Checkout-equivalents per second of bare asyncpg transactions: each
    checkout needs two short transactions (coordinator + service) per step."""
    pool = await create_pool(settings.dsn_for("saga"), clients)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS public.bench_baseline (id text PRIMARY KEY, n int, payload jsonb)"
    )
    count = 0
    stop_at = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop_at:
            key = f"{c}-{i}-{uuid.uuid4().hex[:6]}"
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO public.bench_baseline VALUES ($1, 0, '{}')", key)
                await conn.execute("UPDATE public.bench_baseline SET n = n + 1 WHERE id = $1", key)
                await conn.execute("DELETE FROM public.bench_baseline WHERE id = $1", key)
            count += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    await pool.execute("DROP TABLE IF EXISTS public.bench_baseline")
    await pool.close()
    return count / elapsed / (2 * STEPS_PER_CHECKOUT)


def baseline_kafka(settings: Settings, round_trips: int = 200) -> dict[str, float]:
    """Bare produce -> consume latency, one message at a time, on the same broker."""
    ensure_topics(settings, [BASELINE_TOPIC])
    producer = Producer({"bootstrap.servers": settings.kafka, "linger.ms": 0, "acks": "all"})
    consumer = Consumer({"bootstrap.servers": settings.kafka, "group.id": f"bl-{uuid.uuid4().hex[:6]}",
                         "fetch.wait.max.ms": settings.checkout_kafka_fetch_wait_max_ms,
                         "enable.auto.commit": False})
    parts = consumer.list_topics(BASELINE_TOPIC, timeout=10).topics[BASELINE_TOPIC].partitions
    tps = []
    for p in parts:
        _lo, hi = consumer.get_watermark_offsets(TopicPartition(BASELINE_TOPIC, p), timeout=10)
        tps.append(TopicPartition(BASELINE_TOPIC, p, hi))
    consumer.assign(tps)
    samples = []
    for i in range(round_trips):
        marker = f"{i}-{uuid.uuid4().hex}".encode()
        t0 = time.perf_counter()
        producer.produce(BASELINE_TOPIC, key=b"k", value=marker)
        producer.flush(10)
        while True:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.value() == marker:
                break
        samples.append((time.perf_counter() - t0) * 1000)
    consumer.close()
    return percentiles(samples)


# ---- worker processes ----------------------------------------------------------------


# How one worker's roles are spread over processes. Production runs a process
# per role (deploy/); "split" is the smallest such shape, the saga coordinator
# apart from the services, which lets two Python processes use two cores.
_COORDINATION = ("coordinator", "timers")
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "together": (ROLES,),
    "split": (_COORDINATION, tuple(r for r in ROLES if r not in _COORDINATION)),
    "per-role": tuple((role,) for role in ROLES),
}


def start_workers(settings: Settings, count: int, logdir: Path,
                  layout: str) -> list[subprocess.Popen[bytes]]:
    """``count`` workers, each the processes of ``layout`` (every role once)."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka,
        DATABASE_URL=settings.dsn_for("saga"),
        REDIS_URL=settings.redis_url or "",
        CHECKOUT_KAFKA_SESSION_TIMEOUT_MS=str(settings.checkout_kafka_session_timeout_ms),
        CHECKOUT_KAFKA_HEARTBEAT_INTERVAL_MS=str(settings.checkout_kafka_heartbeat_interval_ms),
        CHECKOUT_KAFKA_FETCH_WAIT_MAX_MS=str(settings.checkout_kafka_fetch_wait_max_ms),
        CHECKOUT_KAFKA_GROUP_PROTOCOL=settings.checkout_kafka_group_protocol,
        CHECKOUT_LOG_LEVEL="WARNING",
        CHECKOUT_PARTITIONS=str(settings.checkout_partitions),
    )
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    logdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for n in range(count):
        for roles in LAYOUTS[layout]:
            log = open(logdir / f"bench-worker-{n}-{'-'.join(roles)}.log", "ab")
            argv = [exe, "up", *(a for role in roles for a in ("--role", role))]
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def warm(settings: Settings, run_id: str, timeout: float = 90.0) -> None:
    """One checkout round trip per worker generation: every group has joined."""
    run = Run(run_id=f"{run_id}w")
    asyncio.run(seed(settings, run.run_id))
    drive(settings, run, duration=0.01, rate=None, window=1)
    if run.done < len(run.sent):
        raise RuntimeError("the workers did not answer a warm-up checkout")


async def prepare_all(settings: Settings) -> None:
    await prepare(settings)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0
