"""The usage gate on Redis: one Lua script per operation, so each is atomic.

Keys per code (hash-tagged so both land on one cluster slot):
- ``promo:{CODE}:uses``: how many sessions hold a use; its absence means Redis
  lost its data (restart, eviction) and the gate must be rebuilt from the ledger;
- ``promo:{CODE}:holders``: a sorted set, session id -> when it was admitted
  (Redis server time), which makes a take idempotent per session and lets a
  reconcile tell an in-flight holder from a stale one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.promotions.gate import Admission, Reconciled

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "

TAKE = _NOW + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('ZADD', KEYS[2], 'XX', now, ARGV[1])
    return 1
end
if tonumber(redis.call('GET', KEYS[1])) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('INCR', KEYS[1])
return 1
"""

GIVE_BACK = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
    if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
    return 1
end
return 0
"""

# ARGV[1]: grace in seconds; ARGV[2..]: the sessions the ledger says hold a use.
RECONCILE = _NOW + """
local ledger = {}
for i = 2, #ARGV do ledger[ARGV[i]] = true end
local dropped = 0
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))) do
    if not ledger[s] then
        redis.call('ZREM', KEYS[2], s)
        dropped = dropped + 1
    end
end
local added = 0
for i = 2, #ARGV do
    added = added + redis.call('ZADD', KEYS[2], 'NX', now, ARGV[i])
end
local count = redis.call('ZCARD', KEYS[2])
redis.call('SET', KEYS[1], count)
return {added, dropped, count}
"""

_ADMISSION = {1: Admission.ADMITTED, 0: Admission.FULL, -1: Admission.MISSING}


def keys(code: str) -> list[str]:
    return [f"promo:{{{code}}}:uses", f"promo:{{{code}}}:holders"]


class RedisUsageGate:
    """``UsageGate`` over a ``redis.asyncio`` client built by the composition root."""

    def __init__(self, client: Any, grace_seconds: float = 30.0) -> None:
        # Scripts run by EVALSHA and are re-loaded by redis-py after a restart.
        self._take = client.register_script(TAKE)
        self._give_back = client.register_script(GIVE_BACK)
        self._reconcile = client.register_script(RECONCILE)
        self._grace = grace_seconds

    async def take(self, code: str, session_id: str, max_uses: int) -> Admission:
        answer = await self._take(keys=keys(code), args=[session_id, max_uses])
        return _ADMISSION[int(answer)]

    async def give_back(self, code: str, session_id: str) -> bool:
        return bool(await self._give_back(keys=keys(code), args=[session_id]))

    async def reconcile(self, code: str, holders: Sequence[str]) -> Reconciled:
        added, dropped, count = await self._reconcile(
            keys=keys(code), args=[self._grace, *holders]
        )
        return Reconciled(int(added), int(dropped), int(count))
