"""The organic-scoring outbox: durable, bounded, delivered at least once, in order.

Every completed fan-out's payload is written here (SQLite file or Redis),
never kept only in process memory. One forwarder at a time across all API
workers and hosts holds a lease and delivers the oldest payloads first; the
lease expires if its holder dies, so another worker (or the restarted API)
takes over. A payload is removed only after the validator acknowledged it, so
nothing acknowledged by the API is lost; when the outbox is full (by count, or
by the size of the payloads' JSON) the oldest payloads are dropped and counted.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.jsonutil import dumps, loads
from shared.store.base import RedisGate, RedisLink, RedisLinks, open_by_url
from shared.store.sqlite_tables import SQLiteTables

MAX_BYTES = 256 << 20  # ``OUTBOX_MAX_BYTES``'s default
# Over ``max_bytes``, the bytes held are counted again from the sizes of the payloads still there, at most this often
# (each store): an API of an older version on the same store deletes payloads without releasing their bytes, and
# the count, ever higher, dropped every payload but the newest at each commit, for good.
RECOUNT_SECONDS = 60.0
# A full outbox drops at the commits of every API worker sharing it: the run of drops is kept in the store, and
# told as one (a WARNING, a line a minute at most, an INFO line a commit that drops nothing ``FULL_SETTLE_S`` after
# the last drop), whichever worker commits. Each worker told its own, and counted its own drops "since start".
FULL_EVERY_S = 60.0
FULL_SETTLE_S = 60.0
ACK_GROUP = 500  # ids a statement at most (SQLite's bound on a statement's variables is 32,766)


@dataclass(frozen=True)
class OutboxItem:
    """One stored payload. ``raw`` is its JSON text as stored: the forwarder posts it as is
    (parsing every payload only to serialise it again cost the API a few per cent)."""

    id: str
    raw: str
    attempts: int = 0

    @property
    def payload(self) -> dict[str, Any]:
        return loads(self.raw)


@dataclass(frozen=True)
class Stored:
    """A group commit: what it dropped, and what it did to the run of drops every worker sharing the store
    tells as one."""

    dropped: int = 0  # old payloads dropped to make room
    total: int = 0  # payloads dropped since the store began counting (``sn1_api_outbox_dropped``)
    run: str = ""  # "began", "again" (its line a minute is due), "ended", or "" (nothing to tell)
    count: int = 0  # "again": dropping commits since the run's last line; "ended": in the whole run
    seconds: float = 0.0  # "again": since the run's last line; "ended": how long it lasted


@dataclass(frozen=True)
class Pace:
    """The backoff every forwarder sharing the outbox follows after a failed delivery pass: full jitter, the next
    attempt ``jitter`` (drawn by the caller, in [0, 1]) of ``base * 2**passes`` seconds (at most ``most``) after
    it, ``passes`` the fleet's failed passes in a row. Kept by each worker, the lease moving to one that had not
    failed began the backoff again at ``base``: a validator down was posted to about once a lease (10 s), not
    once a minute."""

    base: float
    most: float
    jitter: float

    def delay(self, passes: int) -> float:
        return self.jitter * min(self.most, self.base * 2 ** min(passes, 30))


class Outbox(Protocol):
    async def store(self, payloads: list[dict[str, Any]], now: float) -> Stored:
        """``put_many``, and the run of drops kept beside the payloads, at ``now`` (Unix seconds)."""
        ...

    async def put(self, payload: dict[str, Any]) -> int:
        """Append a payload; returns how many old payloads were dropped to make room."""
        ...

    async def put_many(self, payloads: list[dict[str, Any]]) -> int:
        """Append payloads in order in one transaction (group commit); returns how many were dropped."""
        ...

    async def peek(self, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` payloads, oldest first."""
        ...

    async def ack(self, item_id: str) -> None: ...

    async def ack_many(self, item_ids: list[str]) -> None:
        """Remove delivered payloads in one transaction."""
        ...

    async def depth(self) -> int: ...

    async def dropped(self) -> int: ...

    async def acquire_lease(self, holder: str, seconds: float) -> bool:
        """Take or renew the forwarder lease; False if another live holder has it."""
        ...

    async def release_lease(self, holder: str) -> None: ...

    async def outage_failed(self, since: float) -> bool:
        """Count one failed delivery in the outage every forwarder shares, beginning it at ``since`` (Unix
        seconds) if none is on; True when this call began it (its teller says so: once, whichever worker)."""
        ...

    async def outage_ended(self) -> tuple[float, int] | None:
        """End the shared outage, and its backoff (``outage_backoff``): its start and failures, to the one caller
        that ended it (None: none was on)."""
        ...

    async def outage_backoff(self, now: float, pace: Pace) -> tuple[int, float]:
        """One more failed delivery pass, at ``now`` (Unix seconds): the fleet's failed passes in a row, and the
        next attempt (Unix seconds) it sets, ``pace`` after ``now``, for whichever worker holds the lease then."""
        ...

    async def outage_resume_at(self) -> float:
        """The next delivery attempt the fleet's backoff allows (Unix seconds; 0.0: none waits)."""
        ...

    async def failed_on(self, item_id: str) -> int:
        """Count one more time the validator failed on the payload ``item_id`` (its 500, a post timing out); returns
        how many times it has, whichever worker posted it (``OutboxItem.attempts``, as ``peek`` reads them)."""
        ...

    async def close(self) -> None: ...


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, holder TEXT, until REAL, value INTEGER);
-- each payload's size (its JSON's characters), beside it, and their sum in outbox_meta's 'bytes': trimmed without
-- reading the payloads (rows from before them count 0)
CREATE TABLE IF NOT EXISTS outbox_size (id INTEGER PRIMARY KEY, size INTEGER NOT NULL);
-- the run of drops of a full outbox (one row while one is on): its start, last drop, dropping commits, last line
-- and the dropping commits since
CREATE TABLE IF NOT EXISTS outbox_full (id INTEGER PRIMARY KEY CHECK (id = 1), since REAL NOT NULL,
    last REAL NOT NULL, commits INTEGER NOT NULL, told REAL NOT NULL, untold INTEGER NOT NULL);
INSERT OR IGNORE INTO outbox_meta (name, holder, until, value) VALUES ('lease', NULL, 0, 0);
INSERT OR IGNORE INTO outbox_meta (name, holder, until, value) VALUES ('dropped', NULL, 0, 0);
INSERT OR IGNORE INTO outbox_meta (name, holder, until, value) VALUES ('outage', NULL, 0, 0);
INSERT OR IGNORE INTO outbox_meta (name, holder, until, value) VALUES ('bytes', NULL, 0, 0);
-- the failed delivery passes' backoff every worker follows: ``until`` the next attempt, ``value`` the passes
INSERT OR IGNORE INTO outbox_meta (name, holder, until, value) VALUES ('pace', NULL, 0, 0);
-- the times the validator failed on a payload (its 500, a post timing out), whichever worker posted it
CREATE TABLE IF NOT EXISTS outbox_failed (id INTEGER PRIMARY KEY, times INTEGER NOT NULL);
"""

# A group commit's reads: the id span (``_count_over_limit``), the drops so far, and whether a run of drops is on.
_BOOKKEEPING = ("SELECT (SELECT MIN(id) FROM outbox), (SELECT MAX(id) FROM outbox), "
                "(SELECT value FROM outbox_meta WHERE name = 'dropped'), EXISTS (SELECT 1 FROM outbox_full)")


class SQLiteOutbox(SQLiteTables):
    """Outbox in the API's SQLite file (own tables, own connection; WAL, safe across processes)."""

    label = "sqlite outbox"

    def __init__(self, path: str | Path, *, max_items: int = 10_000, max_bytes: int = MAX_BYTES) -> None:
        super().__init__(path, SQLITE_SCHEMA)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._recounted_at = -RECOUNT_SECONDS  # ``time.monotonic()`` at this process's last recount of the bytes

    async def put(self, payload: dict[str, Any]) -> int:
        return await self.put_many([payload])

    async def put_many(self, payloads: list[dict[str, Any]]) -> int:
        return (await self.store(payloads, time.time())).dropped

    async def store(self, payloads: list[dict[str, Any]], now: float) -> Stored:
        rows = [(dumps(p), now) for p in payloads]

        def run(db: sqlite3.Connection) -> Stored:
            for row in rows:
                row_id = db.execute("INSERT INTO outbox (payload, created_at) VALUES (?, ?)", row).lastrowid
                db.execute("INSERT OR REPLACE INTO outbox_size (id, size) VALUES (?, ?)", (row_id, len(row[0])))
            held = self._add_bytes(db, sum(len(raw) for raw, _ in rows))
            # what the bookkeeping reads, in one statement (it was three): the id span, the drops, a run of drops on
            lo, hi, total, running = db.execute(_BOOKKEEPING).fetchone()
            excess = max(self._count_over_limit(db, lo, hi), self._count_over_bytes(db, held))
            if excess > 0:
                (last,) = db.execute("SELECT id FROM outbox ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()
                self._remove(db, "id <= ?", (last,))
                (total,) = db.execute("UPDATE outbox_meta SET value = value + ? WHERE name = 'dropped' RETURNING value",
                                      (excess,)).fetchone()
            if not (excess or running):  # the common commit: no drop, no run of drops to end
                return Stored(0, total)
            return Stored(excess, total, *self._full_run(db, excess, now))

        return self._tx(run) if rows else Stored()

    @staticmethod
    def _full_run(db: sqlite3.Connection, dropped: int, now: float) -> tuple[str, int, float]:
        """The run of drops after a commit that dropped ``dropped``: what to tell, the count and the seconds."""
        row = db.execute("SELECT since, last, commits, told, untold FROM outbox_full").fetchone()
        if not dropped:
            if row is None or now - row[1] < FULL_SETTLE_S:
                return "", 0, 0.0
            db.execute("DELETE FROM outbox_full")
            return "ended", row[2], now - row[0]
        if row is None:
            db.execute("INSERT INTO outbox_full VALUES (1, ?, ?, 1, ?, 0)", (now, now, now))
            return "began", 1, 0.0
        told, untold = row[3], row[4] + 1
        if now - told < FULL_EVERY_S:
            db.execute("UPDATE outbox_full SET last = ?, commits = commits + 1, untold = ?", (now, untold))
            return "", 0, 0.0
        db.execute("UPDATE outbox_full SET last = ?, commits = commits + 1, told = ?, untold = 0", (now, now))
        return "again", untold, now - told

    @staticmethod
    def _add_bytes(db: sqlite3.Connection, size: int) -> int:
        """Count ``size`` more bytes held (less, negative); returns what is held now."""
        return db.execute("UPDATE outbox_meta SET value = value + ? WHERE name = 'bytes' RETURNING value",
                          (size,)).fetchone()[0]

    def _remove(self, db: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
        """Delete the rows ``where`` says (of both tables), and their bytes from what is held."""
        (size,) = db.execute(f"SELECT COALESCE(SUM(size), 0) FROM outbox_size WHERE {where}", args).fetchone()
        for table in ("outbox", "outbox_size", "outbox_failed"):
            db.execute(f"DELETE FROM {table} WHERE {where}", args)
        self._add_bytes(db, -size)

    def _count_over_bytes(self, db: sqlite3.Connection, held: int) -> int:
        """How many of the oldest rows go for the rest to fit ``max_bytes`` (the newest always stays: one payload
        larger than the bound alone is kept). Their sizes only: the payloads, MBs each, are not read."""
        if held <= self.max_bytes:
            return 0
        # the sizes of rows an API from before them removed (sharing the file), had it run since
        self._remove(db, "id < (SELECT COALESCE(MIN(id), 0) FROM outbox)", ())
        held = db.execute("SELECT value FROM outbox_meta WHERE name = 'bytes'").fetchone()[0]
        if held > self.max_bytes and time.monotonic() - self._recounted_at >= RECOUNT_SECONDS:
            self._recounted_at = time.monotonic()  # an API from before the running total removed rows and sizes
            (held,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox_size WHERE id IN (SELECT id FROM outbox)"
                                 ).fetchone()
            db.execute("UPDATE outbox_meta SET value = ? WHERE name = 'bytes'", (held,))
        count = 0
        for (size,) in db.execute("SELECT size FROM outbox_size ORDER BY id"):
            if held <= self.max_bytes:
                break
            held -= size
            count += 1
        (rows,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return min(count, rows - 1)

    def _count_over_limit(self, db: sqlite3.Connection, lo: int | None, hi: int | None) -> int:
        """How many rows exceed ``max_items``. The id span (``lo``, ``hi``: two index lookups) bounds the count from
        above; the exact count (a scan of every row's page) is needed only when the span is over."""
        if lo is None or hi is None or hi - lo + 1 <= self.max_items:
            return 0
        (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return count - self.max_items

    async def peek(self, limit: int) -> list[OutboxItem]:
        rows = self._query("SELECT o.id, o.payload, COALESCE(f.times, 0) FROM outbox o LEFT JOIN outbox_failed f "
                           "ON f.id = o.id ORDER BY o.id LIMIT ?", (limit,))
        return [OutboxItem(id=str(i), raw=p if isinstance(p, str) else p.decode(), attempts=n) for i, p, n in rows]

    async def failed_on(self, item_id: str) -> int:
        def run(db: sqlite3.Connection) -> int:  # none counted for a payload gone meanwhile (delivered, dropped)
            row = db.execute("INSERT INTO outbox_failed (id, times) SELECT id, 1 FROM outbox WHERE id = ? "
                             "ON CONFLICT (id) DO UPDATE SET times = times + 1 RETURNING times", (int(item_id),)
                             ).fetchone()
            return row[0] if row else 0

        return self._tx(run)

    async def ack(self, item_id: str) -> None:
        await self.ack_many([item_id])

    async def ack_many(self, item_ids: list[str]) -> None:
        ids = tuple(int(i) for i in item_ids)

        def run(db: sqlite3.Connection) -> None:
            for start in range(0, len(ids), ACK_GROUP):
                group = ids[start:start + ACK_GROUP]
                self._remove(db, f"id IN ({','.join('?' * len(group))})", group)

        self._tx(run)
        self._after_ack()

    def _after_ack(self) -> None:
        """A backlog delivered (a validator back after an outage: up to ``max_items`` payloads, each a whole
        prompt and answer) is given back to the file system bit by bit (an API storing no responses has no
        purge to do it)."""
        self._reclaim_now_and_then()

    async def depth(self) -> int:
        return self._query("SELECT COUNT(*) FROM outbox")[0][0]

    async def dropped(self) -> int:
        return self._query("SELECT value FROM outbox_meta WHERE name = 'dropped'")[0][0]

    async def acquire_lease(self, holder: str, seconds: float) -> bool:
        """The lease's ``until`` is this host's wall clock, shared by its workers. One ending further ahead than
        twice a lease was dated by a clock since stepped back (NTP): taken over, as expired. Kept, a holder
        that died (killed, out of memory) just after the clock went back an hour held every payload that
        long; the margin spares a worker whose read of the clock came a moment before the holder's renewal."""
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE outbox_meta SET holder = ?, until = ? WHERE name = 'lease' AND (holder = ? OR until < ?"
                " OR until > ?)",
                (holder, now + seconds, holder, now, now + 2 * seconds),
            )
            return cur.rowcount == 1

        return self._tx(run)

    async def release_lease(self, holder: str) -> None:
        self._tx(lambda db: db.execute(
            "UPDATE outbox_meta SET holder = NULL, until = 0 WHERE name = 'lease' AND holder = ?", (holder,)))

    async def outage_failed(self, since: float) -> bool:
        """The ``outage`` row: ``until`` its start, ``value`` its failures (0: none on)."""

        def run(db: sqlite3.Connection) -> bool:
            (failures,) = db.execute("SELECT value FROM outbox_meta WHERE name = 'outage'").fetchone()
            db.execute("UPDATE outbox_meta SET until = CASE WHEN value = 0 THEN ? ELSE until END, value = value + 1 "
                       "WHERE name = 'outage'", (since,))
            return failures == 0

        return self._tx(run)

    async def outage_ended(self) -> tuple[float, int] | None:
        def run(db: sqlite3.Connection) -> tuple[float, int] | None:
            since, failures = db.execute("SELECT until, value FROM outbox_meta WHERE name = 'outage'").fetchone()
            db.execute("UPDATE outbox_meta SET until = 0, value = 0 WHERE name IN ('outage', 'pace')")
            return (float(since), int(failures)) if failures else None

        return self._tx(run)

    async def outage_backoff(self, now: float, pace: Pace) -> tuple[int, float]:
        """The ``pace`` row: ``until`` the next attempt, ``value`` the failed passes in a row."""

        def run(db: sqlite3.Connection) -> tuple[int, float]:
            (passes,) = db.execute("UPDATE outbox_meta SET value = value + 1 WHERE name = 'pace' RETURNING value"
                                   ).fetchone()
            resume = now + pace.delay(passes)
            db.execute("UPDATE outbox_meta SET until = ? WHERE name = 'pace'", (resume,))
            return int(passes), resume

        return self._tx(run)

    async def outage_resume_at(self) -> float:
        return float(self._query("SELECT until FROM outbox_meta WHERE name = 'pace'")[0][0])

    async def close(self) -> None:
        self._close_db()


# KEYS[1] = the stream, KEYS[2] = the dropped counter, KEYS[3] = the bytes held, KEYS[4] = each entry's size,
# KEYS[5] = when the bytes held were last counted again, KEYS[6] = the run of drops (as SQLite's outbox_full),
# KEYS[7] = the times the validator failed on each entry (``failed_on``);
# ARGV = max_items, max_bytes, recount seconds, now (0: a group's call but its last, which tells the run), the
# group's drops before this call, FULL_SETTLE_S, FULL_EVERY_S, then a payload and its size, a payload and its size,
# ...; returns the drops, the dropped counter, then the run's telling, count and seconds (as ``Stored``)
_REDIS_PUT = """
for i = 8, #ARGV, 2 do
  local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[i])
  redis.call('HSET', KEYS[4], id, ARGV[i + 1])
  redis.call('INCRBY', KEYS[3], ARGV[i + 1])
end
local max_items, max_bytes, dropped = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
local function held() return tonumber(redis.call('GET', KEYS[3]) or '0') end
local function older(a, b)
  local a1, a2 = string.match(a, '(%d+)-(%d+)')
  local b1, b2 = string.match(b, '(%d+)-(%d+)')
  a1, a2, b1, b2 = tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)
  return a1 < b1 or (a1 == b1 and a2 < b2)
end
if held() > max_bytes and (redis.call('HLEN', KEYS[4]) > redis.call('XLEN', KEYS[1])
                           or redis.call('SET', KEYS[5], '1', 'NX', 'EX', tonumber(ARGV[3]))) then
  -- over the bound: count again what the entries still in the stream hold (an API from before the byte bound
  -- deletes entries without releasing their bytes): whenever sizes outnumber entries, else once a recount's seconds
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  local sizes, total = redis.call('HGETALL', KEYS[4]), 0
  for j = 1, #sizes, 2 do
    if older(sizes[j], first) then redis.call('HDEL', KEYS[4], sizes[j]) else total = total + tonumber(sizes[j + 1]) end
  end
  redis.call('SET', KEYS[3], total)
end
local len = redis.call('XLEN', KEYS[1])
while len > 1 and (len > max_items or held() > max_bytes) do
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1][1]
  redis.call('XDEL', KEYS[1], first)
  redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[4], first) or '0'))
  redis.call('HDEL', KEYS[4], first)
  redis.call('HDEL', KEYS[7], first)
  dropped, len = dropped + 1, len - 1
end
if dropped > 0 then redis.call('INCRBY', KEYS[2], dropped) end
local total, now, all = tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[4]), dropped + tonumber(ARGV[5])
local run = redis.call('HMGET', KEYS[6], 'since', 'last', 'commits', 'told', 'untold')
if now == 0 then return {dropped, total, '', 0, '0'} end
if all == 0 then
  if not run[1] or now - tonumber(run[2]) < tonumber(ARGV[6]) then return {dropped, total, '', 0, '0'} end
  redis.call('DEL', KEYS[6])
  return {dropped, total, 'ended', tonumber(run[3]), tostring(now - tonumber(run[1]))}
end
if not run[1] then
  redis.call('HSET', KEYS[6], 'since', ARGV[4], 'last', ARGV[4], 'commits', 1, 'told', ARGV[4], 'untold', 0)
  return {dropped, total, 'began', 1, '0'}
end
local told, untold = tonumber(run[4]), tonumber(run[5]) + 1
redis.call('HINCRBY', KEYS[6], 'commits', 1)
if now - told < tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[6], 'last', ARGV[4], 'untold', untold)
  return {dropped, total, '', 0, '0'}
end
redis.call('HSET', KEYS[6], 'last', ARGV[4], 'told', ARGV[4], 'untold', 0)
return {dropped, total, 'again', untold, tostring(now - told)}
"""

# KEYS[1] = the stream, KEYS[2] = the bytes held, KEYS[3] = each entry's size, KEYS[4] = the times failed on each;
# ARGV = ids
_REDIS_ACK = """
for _, id in ipairs(ARGV) do
  if redis.call('XDEL', KEYS[1], id) == 1 then
    redis.call('DECRBY', KEYS[2], tonumber(redis.call('HGET', KEYS[3], id) or '0'))
  end
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return 0
"""

_REDIS_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

_REDIS_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] = the outage hash (since, failures); ARGV[1] = now: the failures so far, this one counted
_REDIS_OUTAGE_FAILED = """
redis.call('HSETNX', KEYS[1], 'since', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'failures', 1)
"""

# ... and its backoff's fields (passes, next) with it
_REDIS_OUTAGE_ENDED = """
local v = redis.call('HMGET', KEYS[1], 'since', 'failures')
redis.call('DEL', KEYS[1])
if not v[1] then return false end
return v
"""

# KEYS[1] = the outage hash; ARGV = now, then ``Pace``'s base, most and jitter: the failed passes in a row, this one
# counted, and the next attempt it sets (as ``Pace.delay``)
_REDIS_OUTAGE_BACKOFF = """
local passes = redis.call('HINCRBY', KEYS[1], 'passes', 1)
local delay = tonumber(ARGV[4]) * math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ math.min(passes, 30))
local resume = string.format('%.6f', tonumber(ARGV[1]) + delay)
redis.call('HSET', KEYS[1], 'next', resume)
return {passes, resume}
"""

# KEYS[1] = the entries' failed counts, KEYS[2] = the stream; ARGV[1] = an entry: its count, one more (0: none, the
# entry gone meanwhile)
_REDIS_FAILED_ON = """
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""


PUT_GROUP = 256  # payloads per script call: Redis busy ~2 ms for 256 of 5 KB (measured); ~50 a group at c=64


class RedisOutbox:
    """Outbox as a Redis stream (``<namespace>:outbox``), exact MAXLEN trimming counted atomically."""

    def __init__(self, link: RedisLink, *, namespace: str = "sn1", max_items: int = 10_000,
                 max_bytes: int = MAX_BYTES) -> None:
        self.link = link
        self.r = client = link.client
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.key = f"{namespace}:outbox"
        self.dropped_key = f"{namespace}:outbox:dropped"
        self.bytes_key = f"{namespace}:outbox:bytes"  # the size of the payloads held (their JSON's characters)
        self.sizes_key = f"{namespace}:outbox:sizes"  # entry id -> its payload's size (a stream entry from before: 0)
        self.recounted_key = f"{namespace}:outbox:recounted"  # set for ``RECOUNT_SECONDS`` after a recount
        self.full_key = f"{namespace}:outbox:full"  # the run of drops of a full outbox
        self.lease_key = f"{namespace}:outbox:lease"
        self.outage_key = f"{namespace}:outbox:outage"
        self.failed_key = f"{namespace}:outbox:failed"  # entry id -> the times the validator failed on it
        self.gate = RedisGate(link, "redis outbox")
        self._call = self.gate.call
        self._put = client.register_script(_REDIS_PUT)
        self._ack = client.register_script(_REDIS_ACK)
        self._lease = client.register_script(_REDIS_LEASE)
        self._release = client.register_script(_REDIS_RELEASE)
        self._outage_failed = client.register_script(_REDIS_OUTAGE_FAILED)
        self._outage_ended = client.register_script(_REDIS_OUTAGE_ENDED)
        self._outage_backoff = client.register_script(_REDIS_OUTAGE_BACKOFF)
        self._failed_on = client.register_script(_REDIS_FAILED_ON)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> RedisOutbox:
        return cls(RedisLink.for_data(url), **kw)

    async def put(self, payload: dict[str, Any]) -> int:
        return await self.put_many([payload])

    async def put_many(self, payloads: list[dict[str, Any]]) -> int:
        return (await self.store(payloads, time.time())).dropped

    async def store(self, payloads: list[dict[str, Any]], now: float) -> Stored:
        """The group in one script call per ``PUT_GROUP`` payloads: one round trip, atomic, in order
        (a call per payload made the group commit wait for ~50 sequential round trips at load).
        Trimming once after the group drops exactly what trimming after each add would. The last call
        tells the run of drops, for the whole group."""
        stored = Stored()
        keys = [self.key, self.dropped_key, self.bytes_key, self.sizes_key, self.recounted_key, self.full_key,
                self.failed_key]
        for start in range(0, len(payloads), PUT_GROUP):
            last = start + PUT_GROUP >= len(payloads)
            args: list[Any] = [self.max_items, self.max_bytes, int(RECOUNT_SECONDS), repr(now) if last else 0,
                               stored.dropped, FULL_SETTLE_S, FULL_EVERY_S]
            for raw in (dumps(p) for p in payloads[start:start + PUT_GROUP]):
                args += [raw, len(raw)]
            dropped, total, run, count, seconds = await self._call(self._put(keys=keys, args=args))
            run = run.decode() if isinstance(run, bytes) else run
            stored = Stored(stored.dropped + int(dropped), int(total), run, int(count), float(seconds))
        return stored

    async def peek(self, limit: int) -> list[OutboxItem]:
        """The entries and the times failed on each, in one round trip (the counts: a few payloads at most)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xrange(self.key, count=limit)
        pipe.hgetall(self.failed_key)
        rows, failed = await self._call(pipe.execute())
        failed = {_text(k): int(v) for k, v in failed.items()}
        out = []
        for item_id, fields in rows:
            raw = fields.get(b"p") if b"p" in fields else fields.get("p")
            item_id = _text(item_id)
            out.append(OutboxItem(id=item_id, raw=_text(raw), attempts=failed.get(item_id, 0)))
        return out

    async def failed_on(self, item_id: str) -> int:
        return int(await self._call(self._failed_on(keys=[self.failed_key, self.key], args=[item_id])))

    async def ack(self, item_id: str) -> None:
        await self.ack_many([item_id])

    async def ack_many(self, item_ids: list[str]) -> None:
        if item_ids:
            await self._call(self._ack(keys=[self.key, self.bytes_key, self.sizes_key, self.failed_key],
                                       args=item_ids))

    async def depth(self) -> int:
        return int(await self._call(self.r.xlen(self.key)))

    async def dropped(self) -> int:
        return int(await self._call(self.r.get(self.dropped_key)) or 0)

    async def acquire_lease(self, holder: str, seconds: float) -> bool:
        return bool(await self._call(self._lease(keys=[self.lease_key], args=[holder, int(seconds * 1000)])))

    async def release_lease(self, holder: str) -> None:
        await self._call(self._release(keys=[self.lease_key], args=[holder]))

    async def outage_failed(self, since: float) -> bool:
        return int(await self._call(self._outage_failed(keys=[self.outage_key], args=[repr(since)]))) == 1

    async def outage_ended(self) -> tuple[float, int] | None:
        ended = await self._call(self._outage_ended(keys=[self.outage_key]))
        return None if not ended else (float(ended[0]), int(ended[1]))

    async def outage_backoff(self, now: float, pace: Pace) -> tuple[int, float]:
        passes, resume = await self._call(self._outage_backoff(
            keys=[self.outage_key], args=[repr(now), repr(pace.base), repr(pace.most), repr(pace.jitter)]))
        return int(passes), float(resume)

    async def outage_resume_at(self) -> float:
        return float(await self._call(self.r.hget(self.outage_key, "next")) or 0.0)

    async def close(self) -> None:
        await self.link.release()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_outbox(url: str, *, namespace: str = "sn1", max_items: int = 10_000, max_bytes: int = MAX_BYTES,
                links: RedisLinks | None = None) -> Outbox:
    """The outbox that lives beside the key store named by ``STORE_URL`` (on Redis, on the process's data link,
    ``links``, or on a link of its own without)."""
    return open_by_url(url, functools.partial(SQLiteOutbox, max_items=max_items, max_bytes=max_bytes),
                       functools.partial(RedisOutbox, max_items=max_items, max_bytes=max_bytes), namespace=namespace,
                       links=links)
