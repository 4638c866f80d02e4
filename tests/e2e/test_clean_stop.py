"""`up` stops within 10 s of SIGTERM whatever it is stuck on, and loses nothing.

The coordinator is made to hang inside its handlers: another session holds an
ACCESS EXCLUSIVE lock on ``saga.instances``, so every checkout it takes waits
on PostgreSQL for as long as the lock is held. A stop then has to abandon the
batch in hand (uncommitted), and the checkouts it held are answered by the
next `up` once the lock is gone.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import asyncpg
from ops_helpers import OwnStack

from checkout_saga.client import Cart, checkout_request
from checkout_saga.ops.chaos import PRICE, seed

STOP_BUDGET_SECONDS = 10.0


async def hold_lock(dsn: str, locked: asyncio.Event, release: asyncio.Event) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE saga.instances IN ACCESS EXCLUSIVE MODE")
            locked.set()
            await release.wait()
    finally:
        await conn.close()


def test_up_stops_within_10s_while_its_handlers_hang_on_the_database(own_workdir: Path) -> None:
    with OwnStack(own_workdir) as own:
        assert own.settings is not None
        run = f"st{random.randrange(10**6)}"
        asyncio.run(seed(own.settings, run))
        sku = f"CH-{run}-0"
        worker = own.start()
        cart = Cart(own.settings)
        try:
            first = f"stop-{run}-first"
            cart.send(first, checkout_request(first, [(sku, 1, PRICE)]))
            cart.flush()
            assert cart.results([first], 90)[first]["type"] == "CheckoutSucceeded"

            held = [f"stop-{run}-{i}" for i in range(20)]

            async def stop_while_stuck() -> float:
                locked, release = asyncio.Event(), asyncio.Event()
                holder = asyncio.create_task(hold_lock(own.dsn, locked, release))
                await asyncio.wait_for(locked.wait(), 30)
                for sid in held:
                    cart.send(sid, checkout_request(sid, [(sku, 1, PRICE)]))
                cart.flush()
                await asyncio.sleep(2.0)  # the coordinator now waits on the lock
                assert worker.poll() is None
                started = time.monotonic()
                worker.send_signal(signal.SIGTERM)
                while worker.poll() is None and time.monotonic() - started < 30:
                    await asyncio.sleep(0.05)
                took = time.monotonic() - started
                release.set()
                await holder
                return took

            took = asyncio.run(stop_while_stuck())
            assert worker.poll() is not None, "`up` still running 30 s after SIGTERM"
            assert took < STOP_BUDGET_SECONDS, f"`up` took {took:.1f}s to stop"

            # Nothing lost: the checkouts it held uncommitted are taken again.
            own.start()
            results = cart.results(held, 120)
        finally:
            cart.close()
        assert {sid: results.get(sid, {}).get("type") for sid in held} == {
            sid: "CheckoutSucceeded" for sid in held}
        verified = own.invoke("verify", "--grace", "1", code=None)
        assert verified.exit_code == 0, verified.stdout
