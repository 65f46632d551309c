"""Requests in flight per API key, counted for every API process and host on one store.

Each request that counts takes a *slot*: a row (SQLite) or a sorted-set member (Redis) named by the process that
holds it (its *holder*) and carrying an expiry, its *lease*. A holder renews the leases of the slots it holds well
before they expire (``api/concurrency.py``) and gives each back when its request ends; a process that dies (killed,
its host gone) renews nothing, so its slots pass their expiry and stop counting a lease later, never held for good.

* Redis: ``ns:inflight:<key id>`` is a sorted set, slot -> expiry (ms, the server's clock, so hosts with skewed clocks
  agree). ``ACQUIRE`` drops the expired members, counts the rest and adds one under the limit, in one script.
* SQLite: the ``inflight`` table of the API's file. One ``INSERT ... SELECT ... WHERE count < limit`` statement runs
  under SQLite's write lock, so the count and the add are one step for every process on the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from shared.store.base import ttl_ms
from shared.store.sqlite_tables import sqlite_errors

# Created with the key store's tables (``sqlite.SCHEMA``): the slots of every process on the file.
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS inflight (
    slot TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inflight_key ON inflight (key_id, expires_at);
CREATE INDEX IF NOT EXISTS inflight_holder ON inflight (holder);
"""

# KEYS[1] = ns:inflight:<key id>; ARGV = limit, slot, lease (ms). {1 taken | 0 refused, the slots now held}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, held + 1}
"""

# KEYS[1] = ns:inflight:<key id>; ARGV = lease (ms), then the slots this process holds there: each one's expiry moved
# to a lease from now (``XX``: a slot already given back is not made again), and the set's own expiry with them.
_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] = ns:inflight:<key id>. The slots not expired.
_COUNT = """
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), '+inf')
"""

_SQL_ACQUIRE = """
INSERT INTO inflight (slot, key_id, holder, expires_at)
SELECT :slot, :key, :holder, :now + :lease
WHERE (SELECT COUNT(*) FROM inflight WHERE key_id = :key AND expires_at > :now) < :limit
"""
_SQL_COUNT = "SELECT COUNT(*) FROM inflight WHERE key_id = ? AND expires_at > ?"


@dataclass(frozen=True)
class Acquired:
    """What ``acquire`` did: ``taken`` (False: the key holds ``limit`` slots already, nothing was added) and the
    key's slots in flight after it."""

    taken: bool
    in_flight: int


class InflightSlots(Protocol):
    async def acquire(self, key_id: str, slot: str, limit: int, lease_s: float) -> Acquired:
        """Take ``slot`` for ``key_id`` unless the key holds ``limit`` unexpired slots (for every process)."""
        ...

    async def release(self, key_id: str, slot: str) -> None: ...

    async def renew(self, held: dict[str, list[str]], lease_s: float) -> None:
        """Move the leases of this holder's slots (key id -> slots) to ``lease_s`` from now, and drop
        expired slots (a dead process's) so they do not pile up."""
        ...

    async def count(self, key_id: str) -> int:
        """The key's unexpired slots, for every process (what ``/v1/usage`` shows)."""
        ...


class RedisInflight:
    """The slots in one Redis (the key store's link and namespace: ``RedisStore``'s ``redis``, ``key``)."""

    def __init__(self, client: Any, key: Callable[..., str], call: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._key = key
        self._call = call
        self._r = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)

    async def acquire(self, key_id: str, slot: str, limit: int, lease_s: float) -> Acquired:
        taken, held = await self._call(self._acquire(keys=[self._key("inflight", key_id)],
                                                     args=[limit, slot, ttl_ms(lease_s)]))
        return Acquired(bool(int(taken)), int(held))

    async def release(self, key_id: str, slot: str) -> None:
        await self._call(self._r.zrem(self._key("inflight", key_id), slot))

    async def renew(self, held: dict[str, list[str]], lease_s: float) -> None:
        """One round trip for every key this process holds slots of (expired members are dropped by the next
        ``acquire`` of their key, and a set no one renews expires whole)."""
        if not held:
            return
        pipe = self._r.pipeline(transaction=False)
        for key_id, slots in held.items():
            await self._renew(keys=[self._key("inflight", key_id)], args=[ttl_ms(lease_s), *slots], client=pipe)
        await self._call(pipe.execute())

    async def count(self, key_id: str) -> int:
        return int(await self._call(self._count(keys=[self._key("inflight", key_id)])))


class SQLiteInflight:
    """The slots in the API's SQLite file (the key store's hot-path connection, ``SQLiteStore.db``). The clock is
    the host's: every process on the file is on one host."""

    def __init__(self, db: sqlite3.Connection, holder: str, clock: Callable[[], float]) -> None:
        self._db = db
        self._holder = holder
        self._clock = clock

    async def acquire(self, key_id: str, slot: str, limit: int, lease_s: float) -> Acquired:
        now = self._clock()
        with sqlite_errors():
            taken = self._db.execute(_SQL_ACQUIRE, {"slot": slot, "key": key_id, "holder": self._holder, "now": now,
                                                    "lease": lease_s, "limit": limit}).rowcount > 0
            held = self._db.execute(_SQL_COUNT, (key_id, now)).fetchone()[0]
        return Acquired(taken, held)

    async def release(self, key_id: str, slot: str) -> None:
        with sqlite_errors():
            self._db.execute("DELETE FROM inflight WHERE slot = ?", (slot,))

    async def renew(self, held: dict[str, list[str]], lease_s: float) -> None:
        """Two statements whatever this process holds: its slots all carry its holder name."""
        now = self._clock()
        with sqlite_errors():
            self._db.execute("UPDATE inflight SET expires_at = ? WHERE holder = ?", (now + lease_s, self._holder))
            self._db.execute("DELETE FROM inflight WHERE expires_at <= ?", (now,))

    async def count(self, key_id: str) -> int:
        with sqlite_errors():
            return self._db.execute(_SQL_COUNT, (key_id, self._clock())).fetchone()[0]
