"""The hot-SKU gate in Redis (``StockGate``, the port in ``gate.py``), in front of PostgreSQL.

Keys per SKU (hash-tagged by SKU):

- ``inventory:{SKU}:stock``: a hash, ``available`` (units the gate may still
  let through) and ``version`` (bumped by every change, so a reconcile can
  tell whether anything moved while it read PostgreSQL). A missing
  ``available`` means Redis lost its data: the counter is rebuilt from
  PostgreSQL before anything is admitted.
- ``inventory:{SKU}:holders``: a hash, checkout session -> ``"units:admitted_at"``
  (Redis server time): who holds units taken from the counter. It makes an
  admission idempotent per session and a give-back exact (only what was taken
  is given back, once).
- ``inventory:{SKU}:rate:<window>``: reservations of a cold SKU in one window,
  for automatic hot marking; expires by itself.

A cart's hot lines are admitted by one Lua script (atomic across all of
them), so a cart never holds part of its hot lines in Redis. A multi-SKU
script needs every key on one node: this is built for one Redis (or one
primary), as deployed here; on Redis Cluster the hot SKUs would need one hash tag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from services.inventory.hot import Admission, GateAnswer, Holder, Snapshot, rate_bucket
from services.inventory.rules import Line

_NOW = "local t = redis.call('TIME') local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2])) "

# KEYS: stock_1, holders_1, stock_2, holders_2, ... in SKU order.
# ARGV[1]: session; ARGV[1 + i]: units of line i.
# Returns {1} admitted, {0, i, ...} counters i missing, {-1, left_1, left_2, ...} short.
ADMIT = _NOW + """
local session = ARGV[1]
local n = #KEYS / 2
local todo = {}
for i = 1, n do
    -- deduplicated per session: a line this session holds already is not taken again
    if redis.call('HEXISTS', KEYS[2 * i], session) == 0 then todo[#todo + 1] = i end
end
local missing = {0}
for _, i in ipairs(todo) do
    if redis.call('HEXISTS', KEYS[2 * i - 1], 'available') == 0 then missing[#missing + 1] = i end
end
if #missing > 1 then return missing end
for k, i in ipairs(todo) do
    local left = redis.call('HINCRBY', KEYS[2 * i - 1], 'available', -tonumber(ARGV[i + 1]))
    if left < 0 then
        -- restore every line taken so far, this one included: all or nothing
        for kk = 1, k do
            local j = todo[kk]
            redis.call('HINCRBY', KEYS[2 * j - 1], 'available', tonumber(ARGV[j + 1]))
        end
        local out = {-1}
        for j = 1, n do
            out[#out + 1] = tonumber(redis.call('HGET', KEYS[2 * j - 1], 'available') or '0')
        end
        return out
    end
end
for _, i in ipairs(todo) do
    redis.call('HINCRBY', KEYS[2 * i - 1], 'version', 1)
    redis.call('HSET', KEYS[2 * i], session, ARGV[i + 1] .. ':' .. now)
end
return {1}
"""

# KEYS: stock_i, holders_i per entry; ARGV[i]: the session of entry i.
# Gives back what each session holds of each SKU, once. Returns the units given back.
GIVE_BACK = """
local back = 0
for i = 1, #ARGV do
    local held = redis.call('HGET', KEYS[2 * i], ARGV[i])
    if held then
        redis.call('HDEL', KEYS[2 * i], ARGV[i])
        local units = tonumber(string.match(held, '^(%d+)'))
        if redis.call('HEXISTS', KEYS[2 * i - 1], 'available') == 1 then
            redis.call('HINCRBY', KEYS[2 * i - 1], 'available', units)
            redis.call('HINCRBY', KEYS[2 * i - 1], 'version', 1)
        end
        back = back + units
    end
end
return back
"""

# Same keys as GIVE_BACK: the units were sold; the holders just go.
FORGET = """
for i = 1, #ARGV do
    if redis.call('HDEL', KEYS[2 * i], ARGV[i]) == 1 then
        redis.call('HINCRBY', KEYS[2 * i - 1], 'version', 1)
    end
end
return 0
"""

# KEYS: stock keys; ARGV: units. Adds to counters that exist (a missing one is
# rebuilt from PostgreSQL, which has the units already).
PUT_BACK = """
for i = 1, #KEYS do
    if redis.call('HEXISTS', KEYS[i], 'available') == 1 then
        redis.call('HINCRBY', KEYS[i], 'available', tonumber(ARGV[i]))
        redis.call('HINCRBY', KEYS[i], 'version', 1)
    end
end
return 0
"""

# KEYS: stock keys; ARGV: PostgreSQL's available. Sets counters that are missing only.
REBUILD = """
local built = 0
for i = 1, #KEYS do
    if redis.call('HEXISTS', KEYS[i], 'available') == 0 then
        redis.call('HSET', KEYS[i], 'available', ARGV[i])
        redis.call('HINCRBY', KEYS[i], 'version', 1)
        built = built + 1
    end
end
return built
"""

SNAPSHOT = _NOW + """
local stock = redis.call('HMGET', KEYS[1], 'available', 'version')
return {stock[1] or '', stock[2] or '0', now, redis.call('HGETALL', KEYS[2])}
"""

# KEYS[1]: stock; ARGV: version read, delta. Applies only if nothing moved since.
CORRECT = """
if redis.call('HEXISTS', KEYS[1], 'available') == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[1] then return 0 end
redis.call('HINCRBY', KEYS[1], 'available', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""


def stock_key(sku: str) -> str:
    return f"inventory:{{{sku}}}:stock"


def holders_key(sku: str) -> str:
    return f"inventory:{{{sku}}}:holders"


def rate_key(sku: str, bucket: int) -> str:
    return f"inventory:{{{sku}}}:rate:{bucket}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStockGate:
    """``StockGate`` over a ``redis.asyncio`` client built by the composition root."""

    def __init__(self, client: Any) -> None:
        self._client = client
        # Run by EVALSHA; redis-py loads a script again after a Redis restart.
        self._admit = client.register_script(ADMIT)
        self._give_back = client.register_script(GIVE_BACK)
        self._forget = client.register_script(FORGET)
        self._put_back = client.register_script(PUT_BACK)
        self._rebuild = client.register_script(REBUILD)
        self._snapshot = client.register_script(SNAPSHOT)
        self._correct = client.register_script(CORRECT)

    async def admit(self, session_id: str, lines: Sequence[Line]) -> GateAnswer:
        """One atomic check-and-decrement over all of ``lines`` (the cart's hot lines)."""
        keys: list[str] = []
        for line in lines:
            keys += [stock_key(line.sku), holders_key(line.sku)]
        answer = [int(x) for x in await self._admit(
            keys=keys, args=[session_id, *(line.quantity for line in lines)])]
        if answer[0] == 1:
            return GateAnswer(Admission.ADMITTED)
        if answer[0] == 0:
            return GateAnswer(Admission.MISSING, missing=tuple(lines[i - 1].sku for i in answer[1:]))
        return GateAnswer(Admission.SHORT,
                          left={line.sku: left for line, left in zip(lines, answer[1:])})

    async def rebuild(self, available: Mapping[str, int]) -> int:
        skus = sorted(available)
        if not skus:
            return 0
        return int(await self._rebuild(keys=[stock_key(s) for s in skus],
                                       args=[max(0, available[s]) for s in skus]))

    async def give_back(self, entries: Sequence[tuple[str, str]]) -> int:
        """Give back what each (session, sku) holds; a second call gives nothing."""
        if not entries:
            return 0
        keys: list[str] = []
        for _, sku in entries:
            keys += [stock_key(sku), holders_key(sku)]
        return int(await self._give_back(keys=keys, args=[session for session, _ in entries]))

    async def forget(self, session_id: str, skus: Sequence[str]) -> None:
        if not skus:
            return
        keys: list[str] = []
        for sku in skus:
            keys += [stock_key(sku), holders_key(sku)]
        await self._forget(keys=keys, args=[session_id] * len(skus))

    async def put_back(self, units: Mapping[str, int]) -> None:
        skus = sorted(sku for sku, n in units.items() if n)
        if skus:
            await self._put_back(keys=[stock_key(s) for s in skus], args=[units[s] for s in skus])

    async def count_reservations(self, skus: Sequence[str], window_seconds: float) -> dict[str, int]:
        if not skus:
            return {}
        bucket = rate_bucket(time.time(), window_seconds)
        ttl = max(1, math.ceil(window_seconds * 2))
        pipe = self._client.pipeline(transaction=False)
        for sku in skus:
            pipe.incr(rate_key(sku, bucket))
            pipe.expire(rate_key(sku, bucket), ttl)
        replies = await pipe.execute()
        return {sku: int(replies[2 * i]) for i, sku in enumerate(skus)}

    async def snapshot(self, sku: str) -> tuple[Snapshot, float]:
        """The counter, its version and its holders, read atomically; and Redis's clock."""
        raw_counter, raw_version, raw_now, flat = await self._snapshot(
            keys=[stock_key(sku), holders_key(sku)])
        counter = _text(raw_counter)
        holders = []
        for session, value in zip(flat[::2], flat[1::2]):
            units, _, at = _text(value).partition(":")
            holders.append(Holder(_text(session), int(units), float(at or 0)))
        snap = Snapshot(int(counter) if counter else None, int(_text(raw_version)), tuple(holders))
        return snap, float(_text(raw_now))

    async def correct(self, sku: str, version: int, delta: int) -> bool:
        return bool(await self._correct(keys=[stock_key(sku)], args=[version, delta]))

    async def counter(self, sku: str) -> int | None:
        value = await self._client.hget(stock_key(sku), "available")
        return None if value is None else int(_text(value))

    async def drop(self, sku: str) -> None:
        await self._client.delete(stock_key(sku), holders_key(sku))
