"""Redis store: one Redis shared by a fleet of API hosts.

Every name is prefixed by the namespace (``STORE_NAMESPACE``), so several
deployments or test runs can share one server. Layout (``ns`` = namespace):

* ``ns:key:<sha256>``  hash  the key record (never the secret)
* ``ns:keys``          hash  key id -> sha256 (listing, lookups by id)
* ``ns:rl:<bucket>``   hash  second -> admitted count (the sliding window, see ``window.py``)
* ``ns:usage:<id>``    hash  ``total:<field>`` / ``<day>:<field>`` counters and ``last_used_at``

The hot path is one EVALSHA (``AUTHORIZE``): lookup, expiry and scope checks and
the rate-limit charge run atomically on the server, with the server's clock, so
hosts with skewed clocks still share one window. Scripts touch keys they derive
from the namespace, so this targets a single Redis (or a primary), not Cluster.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.store.base import (
    ALL_SCOPES,
    USAGE_FIELDS,
    Authorization,
    KeyChanges,
    KeyRecord,
    RateDecision,
    StoreUnavailable,
    UsageCounts,
    UsageDelta,
    UsageReport,
    mint_key,
)

MAX_CONNECTIONS = 64  # per process

# The sliding window of window.py, in Lua. Returns allowed, limit, remaining, reset_after, retry_after.
_WINDOW_LUA = """
local function charge(key, limit, now, cost)
  local current = math.floor(now)
  local oldest = current - 60
  local raw = redis.call('HGETALL', key)
  local count, stale, live = 0, {}, {}
  for i = 1, #raw, 2 do
    local b, n = tonumber(raw[i]), tonumber(raw[i + 1])
    if b < oldest then stale[#stale + 1] = raw[i] else count = count + n; live[#live + 1] = {b, n} end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  local need = cost
  if need < 1 then need = 1 end
  local allowed = (count + need) <= limit
  if allowed and cost > 0 then
    redis.call('HINCRBY', key, current, cost)
    redis.call('EXPIRE', key, 62)
    count = count + cost
    live[#live + 1] = {current, cost}
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local reset, retry = 0, 0
  if #live > 0 then reset = live[#live][1] + 61 - now end
  if not allowed then
    local must, freed = count - limit + 1, 0
    for _, e in ipairs(live) do
      freed = freed + e[2]
      if freed >= must then retry = e[1] + 61 - now; break end
    end
    if retry < 0 then retry = 0 end
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  return {allowed and 1 or 0, limit, remaining, tostring(reset), tostring(retry)}
end
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS[1] = ns:key:<hash>; ARGV = now|'', scope|'', rl prefix. Replies {status, fields in RECORD_FIELDS order,
# decision}: HMGET in a fixed order keeps the reply small and its parsing cheap.
AUTHORIZE = _WINDOW_LUA + """
local f = redis.call('HMGET', KEYS[1], 'id', 'key_hash', 'prefix', 'rate_limit', 'name', 'scopes', 'allowed_models',
                     'expires_at', 'created_at')
if not f[1] then return {'unknown'} end
local now = clock(ARGV[1])
if f[8] ~= '' and now >= tonumber(f[8]) then return {'expired', f} end
if ARGV[2] ~= '' and not string.find(',' .. f[6] .. ',', ',' .. ARGV[2] .. ',', 1, true) then
  return {'scope', f}
end
return {'ok', f, charge(ARGV[3] .. 'key:' .. f[1], tonumber(f[4]), now, 1)}
"""
RECORD_FIELDS = ("id", "key_hash", "prefix", "rate_limit", "name", "scopes", "allowed_models", "expires_at",
                 "created_at")

# KEYS[1] = ns:rl:<bucket>; ARGV = limit, cost, now|''
CHARGE = _WINDOW_LUA + """
return charge(KEYS[1], tonumber(ARGV[1]), clock(ARGV[3]), tonumber(ARGV[2]))
"""

# KEYS[1] = ns:key:<hash>; ARGV = field, value, ... (only if the key still exists: never resurrect)
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS[1] = ns:usage:<id>, KEYS[2] = ns:keys; ARGV = id, day, last_used_at, counts in USAGE_FIELDS order
ADD_USAGE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
local fields = {'requests', 'prompt_tokens', 'completion_tokens', 'errors', 'rate_limited'}
for i, name in ipairs(fields) do
  local n = tonumber(ARGV[3 + i])
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[1], 'total:' .. name, n)
    redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':' .. name, n)
  end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[3]) > last then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[3]) end
return 1
"""


def _opt_float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _record_from_fields(values: list[str]) -> KeyRecord:
    return _record(dict(zip(RECORD_FIELDS, values, strict=True)))


def _record(f: dict[str, str]) -> KeyRecord:
    return KeyRecord(
        id=f["id"], key_hash=f["key_hash"], prefix=f["prefix"], rate_limit=int(f["rate_limit"]),
        name=f.get("name") or None,
        scopes=tuple(s for s in f.get("scopes", "").split(",") if s),
        allowed_models=tuple(json.loads(f["allowed_models"])) if f.get("allowed_models") else None,
        expires_at=_opt_float(f.get("expires_at")), created_at=float(f.get("created_at") or 0),
    )


def _fields(record: KeyRecord) -> dict[str, str]:
    return {
        "id": record.id, "key_hash": record.key_hash, "prefix": record.prefix, "rate_limit": str(record.rate_limit),
        "name": record.name or "", "scopes": ",".join(record.scopes),
        "allowed_models": json.dumps(list(record.allowed_models)) if record.allowed_models else "",
        "expires_at": "" if record.expires_at is None else repr(record.expires_at),
        "created_at": repr(record.created_at),
    }


def _decision(raw: list[Any]) -> RateDecision:
    return RateDecision(allowed=bool(int(raw[0])), limit=int(raw[1]), remaining=int(raw[2]),
                        reset_after=max(0.0, float(raw[3])), retry_after=max(0.0, float(raw[4])))


def _authorization(raw: list[Any]) -> Authorization:
    status = raw[0]
    record = _record_from_fields(raw[1]) if len(raw) > 1 else None
    decision = _decision(raw[2]) if status == "ok" else None
    return Authorization(record=record, decision=decision, status=status)


class RedisStore:
    def __init__(self, client: aioredis.Redis, *, namespace: str = "sn1") -> None:
        self.redis = client
        self.namespace = namespace
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._authorize = client.register_script(AUTHORIZE)
        self._charge = client.register_script(CHARGE)
        self._update = client.register_script(UPDATE)
        self._add_usage = client.register_script(ADD_USAGE)
        self._gathering: list[tuple[str, str | None, asyncio.Future[Authorization]]] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sn1") -> RedisStore:
        pool = aioredis.ConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, decode_responses=True, socket_timeout=2.0,
            socket_connect_timeout=2.0, health_check_interval=30,
        )
        return cls(aioredis.Redis.from_pool(pool), namespace=namespace)

    def key(self, *parts: str) -> str:
        """A namespaced Redis key name (for features that share this connection)."""
        return ":".join((self.namespace, *parts))

    async def _call(self, coro: Any) -> Any:
        """Run one command; at most MAX_CONNECTIONS at once, so a burst queues here instead of
        exhausting the pool (which would fail, i.e. 503). Cheaper than redis-py's blocking pool."""
        try:
            async with self._slots:
                return await coro
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"redis: {e.__class__.__name__}: {e}") from e

    # --- keys -------------------------------------------------------------------------------------
    async def create_key(
        self,
        rate_limit: int,
        *,
        name: str | None = None,
        scopes: tuple[str, ...] = ALL_SCOPES,
        allowed_models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        secret, record = mint_key(rate_limit, name=name, scopes=scopes, allowed_models=allowed_models,
                                  expires_at=expires_at)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key("key", record.key_hash), mapping=_fields(record))
        pipe.hset(self.key("keys"), record.id, record.key_hash)
        await self._call(pipe.execute())
        return secret, record

    async def get_key(self, key_hash: str) -> KeyRecord | None:
        f = await self._call(self.redis.hgetall(self.key("key", key_hash)))
        if not f:
            return None
        record = _record(f)
        last = await self._call(self.redis.hget(self.key("usage", record.id), "last_used_at"))
        return _with_last_used(record, last)

    async def get_key_by_id(self, key_id: str) -> KeyRecord | None:
        key_hash = await self._call(self.redis.hget(self.key("keys"), key_id))
        return await self.get_key(key_hash) if key_hash else None

    async def update_key(self, key_id: str, changes: KeyChanges) -> KeyRecord | None:
        current = await self.get_key_by_id(key_id)
        if current is None:
            return None
        new = changes.apply(current)
        flat = [x for kv in _fields(new).items() for x in kv]
        ok = await self._call(self._update(keys=[self.key("key", new.key_hash)], args=flat))
        return new if ok else None

    async def delete_key(self, key_id: str) -> bool:
        key_hash = await self._call(self.redis.hget(self.key("keys"), key_id))
        if not key_hash:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("key", key_hash))
        pipe.hdel(self.key("keys"), key_id)
        pipe.delete(self.key("usage", key_id), self.key("rl", f"key:{key_id}"))
        results = await self._call(pipe.execute())
        return bool(results[0])

    async def list_keys(self) -> list[KeyRecord]:
        index: dict[str, str] = await self._call(self.redis.hgetall(self.key("keys")))
        if not index:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key_id, key_hash in index.items():
            pipe.hgetall(self.key("key", key_hash))
            pipe.hget(self.key("usage", key_id), "last_used_at")
        raw = await self._call(pipe.execute())
        records = [_with_last_used(_record(f), last) for f, last in zip(raw[::2], raw[1::2], strict=True) if f]
        return sorted(records, key=lambda r: r.created_at)

    # --- the hot path -----------------------------------------------------------------------------
    async def authorize(self, key_hash: str, *, scope: str | None, now: float | None = None) -> Authorization:
        """Find the key and charge its limit (one atomic script). Calls made in the same event-loop
        turn go out as one pipeline: one round trip for all of them, each script still atomic and
        run in arrival order, so every request keeps its own exact decision. The first caller of a
        turn gathers the others; alone, it makes a plain call (no pipeline, no task)."""
        if now is not None:  # an explicit clock (tests): at once, on its own
            return _authorization(await self._call(self._authorize(**self._authorize_call(key_hash, scope, now))))
        mine: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        entry = (key_hash, scope, mine)
        if self._gathering is not None:  # another caller leads this turn's batch
            self._gathering.append(entry)
            return await mine
        batch = self._gathering = [entry]
        try:
            await asyncio.sleep(0)  # this turn's other callers join
        except asyncio.CancelledError:
            self._gathering = None
            self._send_batch(batch[1:])  # the others are still owed their answers
            raise
        self._gathering = None
        if len(batch) == 1:
            return _authorization(await self._call(self._authorize(**self._authorize_call(key_hash, scope))))
        self._send_batch(batch)  # a task: it runs to the end even if this caller is cancelled
        return await mine

    def _send_batch(self, batch: list[tuple[str, str | None, asyncio.Future[Authorization]]]) -> None:
        if batch:
            send = asyncio.ensure_future(self._authorize_batch(batch))
            self._sending.add(send)
            send.add_done_callback(self._sending.discard)

    def _authorize_call(self, key_hash: str, scope: str | None, now: float | None = None) -> dict[str, Any]:
        return {"keys": [self.key("key", key_hash)],
                "args": ["" if now is None else repr(now), scope or "", self.key("rl", "")]}

    async def _authorize_batch(self, batch: list[tuple[str, str | None, asyncio.Future[Authorization]]]) -> None:
        batch = [entry for entry in batch if not entry[2].done()]  # a caller that went away is not charged
        if not batch:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key_hash, scope, _ in batch:
                await self._authorize(**self._authorize_call(key_hash, scope), client=pipe)
            raws = await self._call(pipe.execute())
        except BaseException as e:  # StoreUnavailable, or cancelled at shutdown: every waiter hears it
            for _, _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(e if isinstance(e, Exception) else StoreUnavailable("redis: cancelled"))
            if not isinstance(e, Exception):
                raise
            return
        for (_, _, waiter), raw in zip(batch, raws, strict=True):
            if not waiter.done():
                waiter.set_result(_authorization(raw))

    async def charge(self, bucket: str, limit: int, *, cost: int = 1, now: float | None = None) -> RateDecision:
        raw = await self._call(self._charge(keys=[self.key("rl", bucket)],
                                            args=[limit, cost, "" if now is None else repr(now)]))
        return _decision(raw)

    # --- usage ------------------------------------------------------------------------------------
    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        if not deltas:
            return
        pipe = self.redis.pipeline(transaction=False)
        for d in deltas:
            await self._add_usage(
                keys=[self.key("usage", d.key_id), self.key("keys")],
                args=[d.key_id, d.day, repr(d.last_used_at), *(getattr(d.counts, f) for f in USAGE_FIELDS)],
                client=pipe,
            )
        await self._call(pipe.execute())

    async def usage(self, key_id: str, *, since_day: str | None = None) -> UsageReport:
        raw: dict[str, str] = await self._call(self.redis.hgetall(self.key("usage", key_id)))
        totals = UsageCounts()
        days: dict[str, UsageCounts] = {}
        for name, value in raw.items():
            scope, _, field_name = name.rpartition(":")
            if field_name not in USAGE_FIELDS:
                continue
            if scope == "total":
                setattr(totals, field_name, int(value))
            elif since_day is None or scope >= since_day:
                counts = days.setdefault(scope, UsageCounts())
                setattr(counts, field_name, int(value))
        return UsageReport(key_id=key_id, totals=totals, days=dict(sorted(days.items())),
                           last_used_at=_opt_float(raw.get("last_used_at")))

    async def ping(self) -> None:
        await self._call(self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()


def _with_last_used(record: KeyRecord, last: str | None) -> KeyRecord:
    return replace(record, last_used_at=_opt_float(last)) if last else record
