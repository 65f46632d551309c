"""Redis store: one Redis shared by a fleet of API hosts.

Every name is prefixed by the namespace (``STORE_NAMESPACE``), so several
deployments or test runs can share one server. Layout (``ns`` = namespace):

* ``ns:key:<sha256>``  hash  the key record (never the secret)
* ``ns:keys``          hash  key id -> sha256 (listing, lookups by id)
* ``ns:rl:<bucket>``   hash  second -> admitted count (the sliding window, see ``window.py``)
* ``ns:usage:<id>``    hash  ``total:<field>`` / ``<day>:<field>`` counters and ``last_used_at``; a day's models
  (``usage_models``): ``<day>:model:<field>:<model>`` counters and ``<day>:models``, how many names but ``other``
* ``ns:inflight:<id>`` zset  slot -> lease expiry (ms): the key's requests in flight (``inflight.py``)
* ``ns:rotated:<sha256>`` string  a rotated key's id under its old hash, for a minute (``ROTATE``, ``inflight.py``)
* ``ns:store_marker``  string  when the store's first key was created (Unix seconds); never expires (``marker``)
* ``ns:store_lost``    string  when a process first saw the marker gone: the others, and those started
  later, tell the same loss until a key is created or imported

The hot path is one EVALSHA (``AUTHORIZE``) per key per event-loop turn: lookup,
expiry and scope checks and the rate-limit charges of that turn's requests run
atomically on the server, with the server's clock, so hosts with skewed clocks
still share one window. Scripts touch keys they derive
from the namespace, so this targets a single Redis (or a primary), not Cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any, Unpack

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from shared.store.base import (
    USAGE_FIELDS,
    Authorization,
    Hold,
    KeyChanges,
    KeyRecord,
    NewKey,
    RateDecision,
    RedisGate,
    RedisLink,
    StoredBytes,
    StoreMarker,
    StoreUnavailable,
    TurnGroups,
    UsageCounts,
    UsageDelta,
    UsageReport,
    Waiter,
    mint_key,
    new_secret,
    oldest_usage_day,
    releases_of,
    ttl_ms,
)
from shared.store.eviction import UNKNOWN
from shared.store.inflight import ROTATED_HASH_TTL_S, RedisInflight
from shared.store.persistence import Persistence
from shared.store.usage_models import MODEL_FIELDS, MODELS_PER_DAY, OTHER, ModelCounts

PING_TTL_MS = 10_000  # the key a ping writes (``ping``) is gone this long after the last ping

# The sliding window of window.py, in Lua. Returns allowed, limit, remaining, reset_after, retry_after.
_WINDOW_LUA = """
local function load(key, now)
  local current = math.floor(now)
  local oldest = current - 60
  local raw = redis.call('HGETALL', key)
  local newest = current
  for i = 1, #raw, 2 do newest = math.max(newest, tonumber(raw[i])) end
  -- a clock stepped back past the window: the buckets are re-dated to end now (window.py's _shift)
  local shift = newest - current >= 61 and current - newest or 0
  local count, stale, live = 0, {}, {}
  for i = 1, #raw, 2 do
    local b, n = tonumber(raw[i]) + shift, tonumber(raw[i + 1])
    if b < oldest then stale[#stale + 1] = raw[i] else count = count + n; live[#live + 1] = {b, n} end
  end
  if shift ~= 0 then
    redis.call('DEL', key)
    for _, e in ipairs(live) do redis.call('HSET', key, e[1], e[2]) end
    if #live > 0 then redis.call('EXPIRE', key, 62) end
  elseif #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return current, count, live
end
local function add(key, live, current, n)
  redis.call('HINCRBY', key, current, n)
  redis.call('EXPIRE', key, 62)
  live[#live + 1] = {current, n}
end
local function timing(live, count, limit, now, refused)
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local reset, retry = 0, 0
  if #live > 0 then reset = live[#live][1] + 61 - now end
  if refused then
    local must, freed = count - limit + 1, 0
    for _, e in ipairs(live) do
      freed = freed + e[2]
      if freed >= must then retry = e[1] + 61 - now; break end
    end
    if retry < 0 then retry = 0 end
  end
  return tostring(reset), tostring(retry)
end
local function charge(key, limit, now, cost)
  local current, count, live = load(key, now)
  if cost < 0 then  -- give back what the newest charges took, never below none
    table.sort(live, function(a, b) return a[1] > b[1] end)
    for _, e in ipairs(live) do
      if cost >= 0 then break end
      local back = math.min(-cost, e[2])
      if back > 0 then
        redis.call('HINCRBY', key, e[1], -back)
        e[2], count, cost = e[2] - back, count - back, cost + back
      end
    end
    local reset = timing(live, count, limit, now, false)
    return {1, limit, math.max(limit - count, 0), reset, '0'}
  end
  local allowed = (count + math.max(cost, 1)) <= limit
  if allowed and cost > 0 then
    add(key, live, current, cost)
    count = count + cost
  end
  local reset, retry = timing(live, count, limit, now, not allowed)
  return {allowed and 1 or 0, limit, math.max(limit - count, 0), reset, retry}
end
-- n requests one after another, in one read and one write: the decisions of n charge(..., 1) calls
local function charge_each(key, limit, now, n)
  local current, count, live = load(key, now)
  local admitted = math.max(math.min(n, limit - count), 0)
  if admitted > 0 then add(key, live, current, admitted) end
  local reset, retry = timing(live, count + admitted, limit, now, admitted < n)
  local out = {}
  for i = 1, admitted do out[i] = {1, limit, math.max(limit - count - i, 0), reset, '0'} end
  for i = admitted + 1, n do out[i] = {0, limit, math.max(limit - count - admitted, 0), reset, retry} end
  return out
end
local function clock(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# One key's requests of a turn, in order. KEYS[1] = ns:key:<hash>; ARGV = now|'', rl prefix, inflight prefix, the
# default limit of requests in flight ('' when no request asks for a slot), the slots' lease (ms), the number of slots
# given back (``Hold.releases``) and those slots, then a scope|'' and a slot|'' per request. Replies {'unknown'}, {'expired', fields} or {'each', fields, a status per request, a
# decision per 'ok' one, the key's slots in flight, its limit (0: none)}: the key is read once and charged once
# (``charge_each``), each request still decided as if alone. A request with a slot past the key's limit is 'busy'
# (not charged); the others' slots are added once the rate let them in. The charge is the script's first write: a
# Redis out of memory refuses it (OOM), where a write before it (a delete) would have let the whole script run.
# The slots given back are removed from the found key's set (an unknown key's are left to the release batch), but
# after the charge: not counted before it (the count leaves out those still live).
# HMGET in a fixed order (RECORD_FIELDS) keeps the reply small and its parsing cheap.
AUTHORIZE = _WINDOW_LUA + """
local f = redis.call('HMGET', KEYS[1], 'id', 'key_hash', 'prefix', 'rate_limit', 'name', 'scopes', 'allowed_models',
                     'expires_at', 'created_at', 'daily_token_limit', 'max_concurrent', 'max_stored_bytes_per_day')
if not f[1] then return {'unknown'} end
local released, first = {}, 7 + tonumber(ARGV[6] ~= '' and ARGV[6] or '0')
for i = 7, first - 1 do released[#released + 1] = ARGV[i] end
local now = clock(ARGV[1])
if f[8] ~= '' and now >= tonumber(f[8]) then
  if #released > 0 then redis.call('ZREM', ARGV[3] .. f[1], unpack(released)) end  -- frees no memory: no OOM check
  return {'expired', f}
end
local cap, held, slots, now_ms = 0, 0, nil, 0
if ARGV[4] ~= '' then
  cap = tonumber((f[11] and f[11] ~= '') and f[11] or ARGV[4])
  if cap > 0 then
    slots = ARGV[3] .. f[1]
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    held = redis.call('ZCOUNT', slots, '(' .. now_ms, '+inf')  -- a read: the rate charge stays the first write
    for _, slot in ipairs(released) do  -- given back: not counted, removed below
      local until_ms = redis.call('ZSCORE', slots, slot)
      if until_ms and tonumber(until_ms) > now_ms then held = held - 1 end
    end
  end
end
local statuses, n, taking, wanted = {}, 0, {}, held
for i = first, #ARGV, 2 do
  local scope, slot = ARGV[i], ARGV[i + 1]
  if scope ~= '' and not string.find(',' .. f[6] .. ',', ',' .. scope .. ',', 1, true) then
    statuses[#statuses + 1] = 'scope'
  elseif slots and slot ~= '' and wanted >= cap then
    statuses[#statuses + 1] = 'busy'
  else
    statuses[#statuses + 1] = 'ok'
    n = n + 1
    if slots and slot ~= '' then wanted = wanted + 1; taking[n] = slot end
  end
end
local decisions = {}
if n > 0 then decisions = charge_each(ARGV[2] .. 'key:' .. f[1], tonumber(f[4]), now, n) end
if #released > 0 then redis.call('ZREM', ARGV[3] .. f[1], unpack(released)) end
if slots and next(taking) then
  local lease = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now_ms)  -- a dead holder's, expired
  for j = 1, n do
    if taking[j] and decisions[j][1] == 1 then
      redis.call('ZADD', slots, now_ms + lease, taking[j])
      held = held + 1
    end
  end
  if held > 0 then redis.call('PEXPIRE', slots, lease) end
end
return {'each', f, statuses, decisions, held, cap}
"""
RECORD_FIELDS = ("id", "key_hash", "prefix", "rate_limit", "name", "scopes", "allowed_models", "expires_at",
                 "created_at", "daily_token_limit", "max_concurrent",
                 "max_stored_bytes_per_day")  # a key made before any of the last three has none of it (nil)

# KEYS[1] = ns:rl:<bucket>; ARGV = limit, cost, now|''
CHARGE = _WINDOW_LUA + """
return charge(KEYS[1], tonumber(ARGV[1]), clock(ARGV[3]), tonumber(ARGV[2]))
"""

# KEYS[1] = ns:keys; ARGV = id, 'ns:key:', then field, value, ... (only the fields that change, so that two
# admins changing different fields at once both keep theirs). The record is found by id here, not by a hash
# read before: a rotation in between moves it, and a deleted key is never resurrected.
UPDATE = """
local h = redis.call('HGET', KEYS[1], ARGV[1])
if not h then return 0 end
if #ARGV > 2 then redis.call('HSET', ARGV[2] .. h, unpack(ARGV, 3)) end
return 1
"""

# KEYS[1] = ns:keys, KEYS[2] = ns:usage:<id>, KEYS[3] = ns:rl:key:<id>; ARGV = id, 'ns:key:'. The hash is
# read in the same step as the delete: a rotation between the two would leave the renamed record working.
DELETE = """
local h = redis.call('HGET', KEYS[1], ARGV[1])
if not h then return 0 end
redis.call('DEL', ARGV[2] .. h, KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] = ns:key:<old hash>, KEYS[2] = ns:key:<new hash>, KEYS[3] = ns:keys, KEYS[4] = ns:rotated:<old hash>;
# ARGV = id, new hash, new prefix, how long the old hash names the id (ms). The record moves to its new name in one
# step: no moment where both secrets, or neither, work. The old hash names the id a while longer (never a working
# secret: the record is gone from it), for a slot given back by that hash alone (``inflight.py``).
ROTATE = """
if redis.call('HGET', KEYS[3], ARGV[1]) == false then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'key_hash', ARGV[2], 'prefix', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[4])
return 1
"""

# KEYS[1] = ns:usage:<id>, KEYS[2] = ns:keys; ARGV = id, day, last_used_at, counts in USAGE_FIELDS order, the
# oldest day kept, MODELS_PER_DAY, OTHER, then each model's name and counts in MODEL_FIELDS order. The days before
# the oldest are dropped once per key each time it moves (once a day): keyed on the day written instead, a batch of
# many days scanned the whole hash once per day in it (1,500 days: seconds, past the socket timeout, and a retried
# flush could count twice). ``pruned_on``: the mark before 2026-12-06 (a day written). A model's fields begin with
# their day (pruned with it); a name the day does not hold yet is added while ``<day>:models`` is under the cap,
# else its counts go to OTHER's; a model's ``requests`` field is written even at 0: it says the day holds the name.
ADD_USAGE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'pruned_to') or '') < ARGV[9] then
  for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
    local day = string.match(name, '^(%d%d%d%d%-%d%d%-%d%d):')
    if day and day < ARGV[9] then redis.call('HDEL', KEYS[1], name) end
  end
  redis.call('HDEL', KEYS[1], 'pruned_on')
  redis.call('HSET', KEYS[1], 'pruned_to', ARGV[9])
end
local fields = {'requests', 'prompt_tokens', 'completion_tokens', 'errors', 'rate_limited'}
for i, name in ipairs(fields) do
  local n = tonumber(ARGV[3 + i])
  if n ~= 0 then
    redis.call('HINCRBY', KEYS[1], 'total:' .. name, n)
    redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':' .. name, n)
  end
end
local cap, other, names = tonumber(ARGV[10]), ARGV[11], ARGV[2] .. ':models'
for i = 12, #ARGV, 4 do
  local model = ARGV[i]
  if model ~= other and redis.call('HEXISTS', KEYS[1], ARGV[2] .. ':model:requests:' .. model) == 0 then
    if tonumber(redis.call('HGET', KEYS[1], names) or '0') < cap then
      redis.call('HINCRBY', KEYS[1], names, 1)
    else
      model = other
    end
  end
  for j, name in ipairs({'requests', 'prompt_tokens', 'completion_tokens'}) do
    local n = tonumber(ARGV[i + j])
    if n ~= 0 or j == 1 then redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':model:' .. name .. ':' .. model, n) end
  end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[3]) > last then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[3]) end
return 1
"""


# KEYS = ns:usage:<key id>, ns:keys; ARGV = key id, day, size, limit (0: none). A key's bytes written to storage on a
# day, in its usage hash beside that day's tokens (pruned with them, deleted with the key): added unless a limit
# would be passed; {allowed, the day's count}. A deleted key's: allowed, not counted (its write is refused). A negative
# size (a charge given back) takes the count down to 0 at most.
ADD_STORED_BYTES = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return {1, 0} end
local field = ARGV[2] .. ':stored_bytes'
local used = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local size, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
if limit > 0 and used + size > limit then return {0, used} end
if used + size < 0 then size = 0 - used end
return {1, redis.call('HINCRBY', KEYS[1], field, size)}
"""


# KEYS = ns:store_marker, ns:store_lost, ns:keys; ARGV = now, '1' when this process has seen the marker. The marker
# is written with the first key (``create_key``), never here for an empty store: a process started right after a
# loss, before a running one noticed it, took the emptied store for a new one and marked it, which hid the loss
# from every process. A missing marker is a loss only to a process that saw it (recorded once, for all); to the
# others an empty store is still new. Keys and no marker: made by a release before markers, marked now.
MARKER = """
local m = redis.call('GET', KEYS[1])
if m then return {'present', m} end
local lost = redis.call('GET', KEYS[2])
if lost then return {'lost', lost} end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], ARGV[1])
  return {'lost', ARGV[1]}
end
local n = redis.call('HLEN', KEYS[3])
if n > 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  return {'adopted', ARGV[1], n}
end
return {'new', ARGV[1]}
"""


def _model_counts(row: ModelCounts) -> tuple[int, ...]:
    """A model's counts as ``ADD_USAGE`` takes them (``MODEL_FIELDS`` order)."""
    return tuple(getattr(row, f) for f in MODEL_FIELDS)


def _opt_float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def _opt_int(v: str | None) -> int | None:
    """A per-key override's field: empty or missing (a record written before it existed) is None, the default."""
    return int(v) if v not in (None, "") else None


def _record_from_fields(values: list[str]) -> KeyRecord:
    return _record(dict(zip(RECORD_FIELDS, values, strict=True)))


def _record(f: dict[str, str]) -> KeyRecord:
    return KeyRecord(
        id=f["id"], key_hash=f["key_hash"], prefix=f["prefix"], rate_limit=int(f["rate_limit"]),
        name=f.get("name") or None,
        scopes=tuple(s for s in f.get("scopes", "").split(",") if s),
        allowed_models=tuple(json.loads(f["allowed_models"])) if f.get("allowed_models") else None,
        expires_at=_opt_float(f.get("expires_at")), created_at=float(f.get("created_at") or 0),
        daily_token_limit=_opt_int(f.get("daily_token_limit")),
        max_concurrent_requests=_opt_int(f.get("max_concurrent")),
        max_stored_bytes_per_day=_opt_int(f.get("max_stored_bytes_per_day")),
    )


def _fields(record: KeyRecord) -> dict[str, str]:
    return {
        "id": record.id, "key_hash": record.key_hash, "prefix": record.prefix, "rate_limit": str(record.rate_limit),
        "name": record.name or "", "scopes": ",".join(record.scopes),
        "allowed_models": json.dumps(list(record.allowed_models)) if record.allowed_models else "",
        "expires_at": "" if record.expires_at is None else repr(record.expires_at),
        "created_at": repr(record.created_at),
        "daily_token_limit": "" if record.daily_token_limit is None else str(record.daily_token_limit),
        "max_concurrent": "" if record.max_concurrent_requests is None else str(record.max_concurrent_requests),
        "max_stored_bytes_per_day": ("" if record.max_stored_bytes_per_day is None
                                     else str(record.max_stored_bytes_per_day)),
    }


def _decision(raw: list[Any]) -> RateDecision:
    return RateDecision(allowed=bool(int(raw[0])), limit=int(raw[1]), remaining=int(raw[2]),
                        reset_after=max(0.0, float(raw[3])), retry_after=max(0.0, float(raw[4])))


def _authorizations(raw: list[Any], holds: list[Hold | None]) -> list[Authorization]:
    """``AUTHORIZE``'s reply as one Authorization per request, in order: with a ``Hold``, the slot it took (a
    request the rate let in, of a key with a limit) and the key's slots in flight."""
    record = _record_from_fields(raw[1]) if len(raw) > 1 else None
    if raw[0] != "each":  # unknown or expired: the same for every request
        return [Authorization(record=record, decision=None, status=raw[0])] * len(holds)
    decisions, held, limited = iter(raw[3]), int(raw[4]), int(raw[5]) > 0
    out = []
    for status, hold in zip(raw[2], holds, strict=True):
        decision = _decision(next(decisions)) if status == "ok" else None
        took = hold is not None and limited and decision is not None and decision.allowed
        out.append(Authorization(record=record, decision=decision, status=status,
                                 slot=hold.slot if took and hold is not None else None,
                                 in_flight=held if hold is not None and limited else 0))
    return out


class RedisStore:
    def __init__(self, link: RedisLink, *, namespace: str = "sn1") -> None:
        self.link = link
        self.redis: aioredis.Redis = link.client
        self.namespace = namespace
        self.gate = RedisGate(link, "redis")
        self._call = self.gate.call
        client = self.redis
        self._authorize = client.register_script(AUTHORIZE)
        self._charge = client.register_script(CHARGE)
        self._update = client.register_script(UPDATE)
        self._rotate = client.register_script(ROTATE)
        self._delete = client.register_script(DELETE)
        self._add_usage = client.register_script(ADD_USAGE)
        self._add_stored_bytes = client.register_script(ADD_STORED_BYTES)
        self._marker = client.register_script(MARKER)
        self._gathering: list[Waiter] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sn1") -> RedisStore:
        return cls(RedisLink.for_keys(url), namespace=namespace)

    def key(self, *parts: str) -> str:
        """A namespaced Redis key name (for features that share this connection)."""
        return ":".join((self.namespace, *parts))

    def inflight(self) -> RedisInflight:
        """The keys' requests in flight, in this Redis and namespace, through this store's gate."""
        return RedisInflight(self.redis, self.key, self.gate)

    # --- keys -------------------------------------------------------------------------------------
    async def create_key(self, rate_limit: int, **settings: Unpack[NewKey]) -> tuple[str, KeyRecord]:
        secret, record = mint_key(rate_limit, **settings)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key("key", record.key_hash), mapping=_fields(record))
        pipe.hset(self.key("keys"), record.id, record.key_hash)
        # a key written is the operator acting on a store that lost its data: marked again, the loss cleared
        pipe.set(self.key("store_marker"), repr(record.created_at), nx=True)
        pipe.delete(self.key("store_lost"))
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
        """The record by id: the index names its hash, then the record is read by hash. A rotation
        between the two reads moves the record to a new hash: the index is read again (it was a 404 for
        a key that exists, and a modify during a rotation was dropped)."""
        for _ in range(3):
            key_hash = await self._call(self.redis.hget(self.key("keys"), key_id))
            if not key_hash:
                return None
            record = await self.get_key(key_hash)
            if record is not None:
                return record
        return None

    async def update_key(self, key_id: str, changes: KeyChanges) -> KeyRecord | None:
        current = await self.get_key_by_id(key_id)
        if current is None:
            return None
        before, after = _fields(current), _fields(changes.apply(current))
        flat = [x for name, value in after.items() if value != before[name] for x in (name, value)]
        ok = await self._call(self._update(keys=[self.key("keys")], args=[key_id, self.key("key", ""), *flat]))
        return await self.get_key_by_id(key_id) if ok else None

    async def rotate_key(self, key_id: str) -> tuple[str, KeyRecord] | None:
        current = await self.get_key_by_id(key_id)
        if current is None:
            return None
        secret, new = new_secret(current)
        keys = [self.key("key", current.key_hash), self.key("key", new.key_hash), self.key("keys"),
                self.key("rotated", current.key_hash)]
        ok = await self._call(self._rotate(keys=keys, args=[key_id, new.key_hash, new.prefix,
                                                            ttl_ms(ROTATED_HASH_TTL_S)]))
        return (secret, new) if ok else None

    async def delete_key(self, key_id: str) -> bool:
        keys = [self.key("keys"), self.key("usage", key_id), self.key("rl", f"key:{key_id}")]
        return bool(await self._call(self._delete(keys=keys, args=[key_id, self.key("key", "")])))

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
    async def authorize(self, key_hash: str, *, scope: str | None, now: float | None = None,
                        hold: Hold | None = None) -> Authorization:
        """Find the key and charge its limit (one atomic script). Calls made in the same event-loop
        turn go out together: one script call per distinct key, which reads the key once and charges
        its requests in arrival order, each with its own exact decision; several keys share one
        pipeline (one round trip). The first caller of a turn gathers the others; alone, it makes a
        plain call (no pipeline, no task)."""
        if now is not None:  # an explicit clock (tests): at once, on its own
            return (await self._authorize_group(key_hash, [scope], now, [hold]))[0]
        mine: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        entry = (key_hash, scope, hold, mine)
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
            return (await self._authorize_group(key_hash, [scope], holds=[hold]))[0]
        self._send_batch(batch)  # a task: it runs to the end even if this caller is cancelled
        return await mine

    def _send_batch(self, batch: list[Waiter]) -> None:
        if batch:
            send = asyncio.ensure_future(self._authorize_batch(batch))
            self._sending.add(send)
            send.add_done_callback(self._sending.discard)

    async def _authorize_group(self, key_hash: str, scopes: list[str | None], now: float | None = None,
                               holds: list[Hold | None] | None = None) -> list[Authorization]:
        """One key's requests, in order, in one script call."""
        holds = holds or [None] * len(scopes)
        raw = await self._call(self._authorize(keys=[self.key("key", key_hash)],
                                               args=self._authorize_args(scopes, holds, now)))
        return _authorizations(raw, holds)

    def _authorize_args(self, scopes: list[str | None], holds: list[Hold | None], now: float | None = None,
                        ) -> list[Any]:
        first = next((h for h in holds if h is not None), None)
        released = releases_of(holds)
        terms = ["", "", ""] if first is None else [first.default_limit, ttl_ms(first.lease_s), len(released)]
        return ["" if now is None else repr(now), self.key("rl", ""), self.key("inflight", ""), *terms, *released,
                *(x for scope, hold in zip(scopes, holds, strict=True)
                  for x in (scope or "", hold.slot if hold is not None else ""))]

    async def _authorize_batch(self, batch: list[Waiter]) -> None:
        """A turn's callers: one script call per distinct key (several keys: one pipeline, one round trip)."""
        groups = TurnGroups(batch)
        if not groups.by_key:
            return
        try:
            if len(groups.by_key) == 1:
                [key_hash] = groups.by_key
                results = [await self._authorize_group(key_hash, groups.scopes(key_hash), holds=groups.holds(key_hash))]
            else:
                results = await self._authorize_pipeline(groups)
        except BaseException as e:  # StoreUnavailable, or cancelled at shutdown: every waiter hears it
            groups.fail(e if isinstance(e, Exception) else StoreUnavailable("redis: cancelled"))
            if not isinstance(e, Exception):
                raise
            return
        groups.answer(results)

    async def _authorize_pipeline(self, groups: TurnGroups) -> list[list[Authorization]]:
        """Several keys' groups in one round trip. EVALSHA is queued directly: a pipeline of registered
        scripts would first ask ``SCRIPT EXISTS`` (a second round trip on every call); a server that
        lost its scripts (restart, ``SCRIPT FLUSH``) gets them loaded once and the pipeline again."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for key_hash in groups.by_key:
                pipe.evalsha(self._authorize.sha, 1, self.key("key", key_hash),
                             *self._authorize_args(groups.scopes(key_hash), groups.holds(key_hash)))
            try:
                raws = await self._call(pipe.execute())
            except StoreUnavailable as e:
                if attempt == 1 and isinstance(e.__cause__, NoScriptError):
                    await self._call(self.redis.script_load(AUTHORIZE))
                    continue
                raise
            return [_authorizations(raw, groups.holds(key_hash)) for raw, key_hash in zip(raws, groups.by_key, strict=True)]
        raise AssertionError("unreachable")

    async def charge(self, bucket: str, limit: int, *, cost: int = 1, now: float | None = None) -> RateDecision:
        raw = await self._call(self._charge(keys=[self.key("rl", bucket)],
                                            args=[limit, cost, "" if now is None else repr(now)]))
        return _decision(raw)

    # --- usage ------------------------------------------------------------------------------------
    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        if not deltas:
            return
        # One transaction: a connection lost part way through a plain pipeline leaves some rows added,
        # and the recorder, told the flush failed, adds them again with its retry.
        pipe = self.redis.pipeline(transaction=True)
        for d in deltas:
            await self._add_usage(
                keys=[self.key("usage", d.key_id), self.key("keys")],
                args=[d.key_id, d.day, repr(d.last_used_at), *(getattr(d.counts, f) for f in USAGE_FIELDS),
                      oldest_usage_day(d.last_used_at),  # when this moves, the days before it are dropped
                      MODELS_PER_DAY, OTHER,
                      *(v for name, row in d.counts.models.items() for v in (name, *_model_counts(row)))],
                client=pipe,
            )
        await self._call(pipe.execute())

    async def usage(self, key_id: str, *, since_day: str | None = None) -> UsageReport:
        raw: dict[str, str] = await self._call(self.redis.hgetall(self.key("usage", key_id)))
        totals = UsageCounts()
        days: dict[str, UsageCounts] = {}
        stored: dict[str, int] = {}
        models: dict[str, dict[str, ModelCounts]] = {}
        for name, value in raw.items():
            day, kind, model_field, model = (*name.split(":", 3), "", "", "")[:4]
            if kind == "model" and model_field in MODEL_FIELDS and (since_day is None or day >= since_day):
                setattr(models.setdefault(day, {}).setdefault(model, ModelCounts()), model_field, int(value))
                continue
            scope, _, field_name = name.rpartition(":")
            if field_name == "stored_bytes" and (since_day is None or scope >= since_day) and int(value):
                stored[scope] = int(value)
            if field_name not in USAGE_FIELDS:
                continue
            if scope == "total":
                setattr(totals, field_name, int(value))
            elif since_day is None or scope >= since_day:
                counts = days.setdefault(scope, UsageCounts())
                setattr(counts, field_name, int(value))
        for day, rows in models.items():
            if day in days:  # a day's models only with the day, as on SQLite
                days[day].models = rows
        return UsageReport(key_id=key_id, totals=totals, days={d: c for d, c in sorted(days.items()) if c.counted()},
                           last_used_at=_opt_float(raw.get("last_used_at")), stored_bytes=dict(sorted(stored.items())))

    async def day_tokens(self, key_id: str, day: str) -> int:
        prompt, completion = await self._call(self.redis.hmget(self.key("usage", key_id), f"{day}:prompt_tokens",
                                                               f"{day}:completion_tokens"))
        return int(prompt or 0) + int(completion or 0)

    async def add_stored_bytes(self, key_id: str, day: str, size: int, *, limit: int) -> StoredBytes:
        allowed, used = await self._call(self._add_stored_bytes(keys=[self.key("usage", key_id), self.key("keys")],
                                                                args=[key_id, day, size, limit]))
        return StoredBytes(bool(allowed), int(used))

    async def day_stored_bytes(self, key_id: str, day: str) -> int:
        return int(await self._call(self.redis.hget(self.key("usage", key_id), f"{day}:stored_bytes")) or 0)

    async def ping(self) -> None:
        """A small write (a key that expires in 10 s), not a ``PING``: every authenticated request writes (its
        rate-limit charge), and a Redis that answers but refuses writes (out of memory under ``noeviction``,
        a read-only replica after a failover) made every request a 503 while ``/ready`` said ready."""
        await self._call(self.redis.set(self.key("ping"), "1", px=PING_TTL_MS))

    async def _config(self, name: str) -> str | None:
        """One of Redis's ``CONFIG`` values, or None where CONFIG is refused (an ACL without it, a managed Redis
        that renames it). Read at start and by ``/ready``, never per request."""
        try:
            got = await self._call(self.redis.config_get(name))
        except StoreUnavailable as e:
            if isinstance(e.__cause__, ResponseError):
                return None
            raise
        value = got.get(name)
        return None if value is None else str(value)

    async def eviction_policy(self) -> str:
        """Redis's ``maxmemory-policy`` (``eviction.py``), or ``unknown`` where CONFIG is refused."""
        return await self._config("maxmemory-policy") or UNKNOWN

    async def persistence(self) -> Persistence | None:
        """Redis's ``appendonly`` and ``save`` (``persistence.py``), or None where CONFIG is refused."""
        appendonly = await self._config("appendonly")
        save = await self._config("save")
        return None if appendonly is None or save is None else Persistence(appendonly, save)

    async def marker(self, *, seen: bool) -> StoreMarker:
        """The marker (``StoreMarker``): one script, every few seconds per process (the
        metrics sampler, ``/ready``), never per request."""
        keys = [self.key(k) for k in ("store_marker", "store_lost", "keys")]
        raw = await self._call(self._marker(keys=keys, args=[repr(time.time()), "1" if seen else "0"]))
        return StoreMarker(status=raw[0], since=float(raw[1]), where=self.where, namespace=self.namespace,
                           keys=int(raw[2]) if len(raw) > 2 else 0)

    @property
    def where(self) -> str:
        """The server as a log line may name it: its password, if any, is never part of it."""
        kw = self.redis.connection_pool.connection_kwargs
        auth = "***@" if kw.get("password") else ""
        if kw.get("path"):
            return f"unix://{auth}{kw['path']}?db={kw.get('db', 0)}"
        scheme = "rediss" if "SSL" in self.redis.connection_pool.connection_class.__name__ else "redis"
        return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    async def close(self) -> None:
        await self.link.release()  # one of the worker's RedisLinks stays open for its other stores


def _with_last_used(record: KeyRecord, last: str | None) -> KeyRecord:
    return replace(record, last_used_at=_opt_float(last)) if last else record
