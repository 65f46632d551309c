"""Requests in flight per API key, counted for every API process and host on one store.

Each request that counts takes a *slot*: a row (SQLite) or a sorted-set member (Redis) named by the process that
holds it (its *holder*) and carrying an expiry, its *lease*. A holder renews the leases of the slots it holds well
before they expire (``api/concurrency.py``) and gives each back when its request ends; a process that dies (killed,
its host gone) renews nothing, so its slots pass their expiry and stop counting a lease later, never held for good.

Slots are taken where the request is authorized, in the same store call (no round trip of their own): the
request's ``Hold`` goes with its key lookup and rate-limit charge, and a request at its key's limit is ``busy``
and not charged.

* Redis: ``ns:inflight:<key id>`` is a sorted set, slot -> expiry (ms, the server's clock, so hosts with skewed clocks
  agree). ``AUTHORIZE`` (``redis.py``) drops the expired members, counts the rest and adds the turn's under the limit.
* SQLite: the ``inflight`` table of the API's file, counted and added to in the authorize turn's write transaction
  (``SlotCount``), so the count and the add are one step for every process on the file.

A slot given back is removed in a batch (``release``), or sooner by the same store call as its key's next
authorization from the process that held it (``Hold.releases``): counted no more by that process's requests.

Here: what a process does with the slots it took (give them back, renew them, count them), and ``SlotCount``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

from shared.store.base import (
    Authorization,
    Hold,
    KeyRecord,
    RedisGate,
    concurrency_limit,
    releases_of,
    ttl_ms,
)
from shared.store.sqlite_tables import sqlite_errors, write_tx

# Created with the key store's tables (``sqlite.SCHEMA``): the slots of every process on the file.
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS inflight (
    slot TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    holder TEXT NOT NULL,  -- the API process that took it (host:pid:random), for a reader of the file
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inflight_key ON inflight (key_id, expires_at);
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

# KEYS[1] = ns:key:<hash>, KEYS[2] = ns:rotated:<hash>; ARGV = the inflight prefix, then slots of that key given back
# by a request that never learnt its key's id (cancelled before its authorization came back, or its answer lost):
# removed from the key's set, found by its record, or, for a key rotated since (its record moved to the new
# secret's hash), by the id its rotation left under the old hash (``ROTATED_HASH_TTL_S``).
_RELEASE_BY_HASH = """
local id = redis.call('HGET', KEYS[1], 'id') or redis.call('GET', KEYS[2])
if id then redis.call('ZREM', ARGV[1] .. id, unpack(ARGV, 2)) end
return 1
"""

# How long a rotated key's old hash still names its id (``ns:rotated:<old hash>``, written by ``ROTATE``), for the
# slots given back by that hash alone: such a give-back is sent within the key store's timeout (2 s) of its
# authorization, so a minute is ample; past it, the slot would be the lease's anyway.
ROTATED_HASH_TTL_S = 60.0

_SQL_COUNT = "SELECT COUNT(*) FROM inflight WHERE key_id = ? AND expires_at > ?"


class GivenBack(NamedTuple):
    """A slot given back, to remove: its key's hash, its id (None when the request never learnt it: cancelled before
    its authorization came back, which may still have taken the slot), the slot."""

    key_hash: str
    key_id: str | None
    slot: str


def delete_slots(db: sqlite3.Connection, slots: Iterable[str]) -> None:
    """Remove these slots from the ``inflight`` table (by name: a slot's name is unique, its key's id not needed)."""
    db.executemany("DELETE FROM inflight WHERE slot = ?", [(slot,) for slot in slots])


def drop_released(db: sqlite3.Connection, holds: list[Hold | None]) -> None:
    """A SQLite authorize turn's first step for a key it found: the slots its holds give back (``Hold.releases``),
    deleted before they are counted."""
    if released := releases_of(holds):
        delete_slots(db, released)


@dataclass(frozen=True)
class SlotCount:
    """A key's slots as one SQLite authorize turn finds them, inside its write transaction (so no other process
    takes one in between): ``held`` unexpired of ``limit``."""

    key_id: str
    limit: int
    held: int

    @classmethod
    def of(cls, db: sqlite3.Connection, record: KeyRecord, holds: list[Hold | None], now: float) -> SlotCount | None:
        """None when no request of the turn asks for a slot, or the key has no limit (nothing is read)."""
        first = next((h for h in holds if h is not None), None)
        if first is None or (limit := concurrency_limit(record, first.default_limit)) <= 0:
            return None
        return cls(record.id, limit, db.execute(_SQL_COUNT, (record.id, now)).fetchone()[0])

    def refuse_busy(self, statuses: list[str], holds: list[Hold | None]) -> list[str]:
        """Each request that asks for a slot past the limit is ``busy`` (in order, as if each came alone)."""
        out, wanted = [], self.held
        for status, hold in zip(statuses, holds, strict=True):
            if status == "ok" and hold is not None:
                if wanted >= self.limit:
                    status = "busy"
                else:
                    wanted += 1
            out.append(status)
        return out

    def take(self, db: sqlite3.Connection, answers: list[Authorization], holds: list[Hold | None],
             now: float) -> list[Authorization]:
        """The slots of the requests the rate let in, added; every answer with a ``Hold`` told the count."""
        taking = [hold if hold is not None and a.decision is not None and a.decision.allowed else None
                  for a, hold in zip(answers, holds, strict=True)]
        db.executemany("INSERT INTO inflight (slot, key_id, holder, expires_at) VALUES (?, ?, ?, ?)",
                       [(h.slot, self.key_id, h.holder, now + h.lease_s) for h in taking if h is not None])
        held = self.held + sum(h is not None for h in taking)
        return [a if hold is None else replace(a, slot=took.slot if took is not None else None, in_flight=held)
                for a, hold, took in zip(answers, holds, taking, strict=True)]


class InflightSlots(Protocol):
    """What a process does with the slots it took (``Store.authorize`` takes them, with a ``Hold``).
    ``failed_may_hold``: whether an authorization that failed (``StoreUnavailable``) may have taken its slot all the
    same (Redis: the script ran, and its answer came after the timeout or was lost with its link), so that it must
    be given back."""

    failed_may_hold: bool

    async def release(self, slots: list[GivenBack]) -> None:
        """Remove these slots, in one store call (one not there: nothing)."""
        ...

    async def renew(self, held: dict[str, list[str]], lease_s: float) -> None:
        """Move the leases of this holder's slots (key id -> slots) to ``lease_s`` from now, and drop
        expired slots (a dead process's) so they do not pile up."""
        ...

    async def count(self, key_id: str) -> int:
        """The key's unexpired slots, for every process (what ``/v1/usage`` shows)."""
        ...


class RedisInflight:
    """The slots in one Redis (the key store's link, namespace and gate: ``RedisStore.inflight``)."""

    failed_may_hold = True  # a script's answer past the timeout, or lost with its link: it may have run

    def __init__(self, client: Any, key: Callable[..., str], gate: RedisGate) -> None:
        self._key = key
        self._call = gate.call
        self._r = client
        self._renew = client.register_script(_RENEW)
        self._count = client.register_script(_COUNT)
        self._release_by_hash = client.register_script(_RELEASE_BY_HASH)

    async def release(self, slots: list[GivenBack]) -> None:
        """One round trip: a ZREM per key (by its hash, for the slots whose key id was never learnt)."""
        by_key: dict[str, list[str]] = {}
        by_hash: dict[str, list[str]] = {}
        for key_hash, key_id, slot in slots:
            if key_id is None:
                by_hash.setdefault(key_hash, []).append(slot)
            else:
                by_key.setdefault(key_id, []).append(slot)
        pipe = self._r.pipeline(transaction=False)
        for key_id, names in by_key.items():
            pipe.zrem(self._key("inflight", key_id), *names)
        for key_hash, names in by_hash.items():
            await self._release_by_hash(keys=[self._key("key", key_hash), self._key("rotated", key_hash)],
                                        args=[self._key("inflight", ""), *names], client=pipe)
        await self._call(pipe.execute())

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

    failed_may_hold = False  # a failed authorize turn's transaction is rolled back: nothing to give back (a locked
    # file would only block the loop again on the DELETE)

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    async def release(self, slots: list[GivenBack]) -> None:
        """One transaction (by slot: its key's id is not needed)."""
        write_tx(self._db, lambda db: delete_slots(db, [given.slot for given in slots]))

    async def renew(self, held: dict[str, list[str]], lease_s: float) -> None:
        """The slots this process knows it holds, by name (not all those of its holder name: a slot whose request
        was cancelled while its authorization came back is not known here: given back, it must not come back), in
        one transaction."""
        now = self._clock()

        def renew(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE inflight SET expires_at = ? WHERE slot = ?",
                           [(now + lease_s, slot) for slots in held.values() for slot in slots])
            db.execute("DELETE FROM inflight WHERE expires_at <= ?", (now,))

        write_tx(self._db, renew)

    async def count(self, key_id: str) -> int:
        with sqlite_errors():
            return self._db.execute(_SQL_COUNT, (key_id, self._clock())).fetchone()[0]
