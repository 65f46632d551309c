"""SQLite store: the embedded default for one host (WAL, safe for many worker processes).

Two connections per process, because durability differs by table:

* ``admin`` (``synchronous=FULL``) writes keys: an acknowledged create/modify/
  delete is fsynced before the API answers, so it survives SIGKILL and power loss.
* ``db`` (``synchronous=NORMAL``) serves the hot path: key lookups, the
  rate-limit windows and usage. In WAL mode a NORMAL commit is atomic and
  survives a process crash; only an OS crash may lose the last counter updates,
  which is acceptable for counters and costs no fsync per request.

Calls are synchronous on purpose: each statement takes a few microseconds and a
thread hop would cost more than the work. Rate-limit charges run in
``BEGIN IMMEDIATE`` so workers on one file serialise on SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Unpack

from shared.store.base import (
    USAGE_FIELDS,
    Authorization,
    Hold,
    KeyChanges,
    KeyRecord,
    NewKey,
    RateDecision,
    StoredBytes,
    StoreUnavailable,
    TurnGroups,
    UsageCounts,
    UsageDelta,
    UsageReport,
    Waiter,
    check_key,
    mint_key,
    new_secret,
    now_or_clock,
    oldest_usage_day,
)
from shared.store.inflight import SQLITE_SCHEMA as INFLIGHT_SCHEMA
from shared.store.inflight import SlotCount, SQLiteInflight, drop_released
from shared.store.sqlite_tables import add_columns, open_db, sqlite_errors, write_tx
from shared.store.usage_models import MODEL_FIELDS, MODELS_PER_DAY, OTHER, ModelCounts
from shared.store.window import charge_each, charge_window

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT,
    rate_limit INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    allowed_models TEXT,
    expires_at REAL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    daily_token_limit INTEGER,
    max_concurrent INTEGER,
    max_stored_bytes_per_day INTEGER
);
CREATE TABLE IF NOT EXISTS rate_windows (
    bucket TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_daily_day ON usage_daily (day);
CREATE TABLE IF NOT EXISTS usage_models (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_models_day ON usage_models (day);
""" + INFLIGHT_SCHEMA
# Decoded key rows a store keeps (``SQLiteStore._record``): rows are re-read on every request, so a change shows at
# once; only the decoding (two JSON lists, a record) is memoised, by the row's columns but ``last_used_at``. Keyed
# by the whole row, each usage flush (which moves a used key's ``last_used_at``) added another copy of every busy
# key: a few busy keys filled the cache with stale copies of themselves and pushed the other keys' rows out.
RECORDS_CACHED = 4096
USAGE_PRUNE_EVERY_S = 3600.0  # how often a flush also drops per-day usage past USAGE_DAYS_KEPT
FOLDED_DAY = "0000-00-00"  # a key's row of the days pruned, summed (no day of its own: never listed)

# A record's columns (what ``_record`` decodes and caches); ``_KEY_COLUMNS`` adds ``last_used_at`` for the admin's
# reads (``_read`` sets it on the cached record). ``authorize`` reads a record without it, as Redis's does: nothing
# on a request reads it (``/v1/usage`` takes it from the store's usage report).
_RECORD_COLUMNS = ("id, key_hash, prefix, name, rate_limit, scopes, allowed_models, expires_at, created_at, "
                   "daily_token_limit, max_concurrent, max_stored_bytes_per_day")
_KEY_COLUMNS = f"{_RECORD_COLUMNS}, last_used_at"
# Columns added after a release: a file made before them gets them when it is opened.
_ADDED_COLUMNS = {"daily_token_limit": "INTEGER", "max_concurrent": "INTEGER", "max_stored_bytes_per_day": "INTEGER"}
_ADDED_USAGE_COLUMNS = {"stored_bytes": "INTEGER NOT NULL DEFAULT 0"}  # bytes written to storage that day
# ``add_stored_bytes``: one statement (atomic across every process on the file), adding to today's row only while
# the key exists and, with a limit (not 0), the day stays within it; the row's new count when it added. A negative
# size (a charge given back) takes the count down to 0 at most.
_ADD_STORED_BYTES = """
INSERT INTO usage_daily (key_id, day, stored_bytes)
SELECT :key, :day, MAX(:size, 0) WHERE EXISTS (SELECT 1 FROM api_keys WHERE id = :key)
  AND (:limit = 0 OR COALESCE((SELECT stored_bytes FROM usage_daily WHERE key_id = :key AND day = :day), 0)
                     + :size <= :limit)
ON CONFLICT(key_id, day) DO UPDATE SET stored_bytes = MAX(stored_bytes + :size, 0)
RETURNING stored_bytes
"""
# A model's row of a key's day (``usage_models``): added under its own name while the day holds it or has room for
# it (fewer than ``MODELS_PER_DAY`` names but ``OTHER``), else under ``OTHER``. One statement, in the flush's
# transaction: the cap holds for every process on the file.
_ADD_MODEL = f"""
INSERT INTO usage_models (key_id, day, model, {', '.join(MODEL_FIELDS)})
SELECT :key, :day, CASE
    WHEN :model = :other OR EXISTS (SELECT 1 FROM usage_models WHERE key_id = :key AND day = :day AND model = :model)
      OR (SELECT COUNT(*) FROM usage_models WHERE key_id = :key AND day = :day AND model != :other) < :cap
    THEN :model ELSE :other END, :requests, :prompt_tokens, :completion_tokens
WHERE true
ON CONFLICT(key_id, day, model) DO UPDATE SET {', '.join(f'{f} = {f} + excluded.{f}' for f in MODEL_FIELDS)}
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:///./state/api.db`` -> ``./state/api.db``; ``sqlite:////abs`` -> ``/abs``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url}")
    return Path(url[len("sqlite:///"):])


def _connect(path: Path, synchronous: str, schema: str = "",
             migrate: Callable[[sqlite3.Connection], None] | None = None) -> sqlite3.Connection:
    db = open_db(path, synchronous=synchronous, schema=schema, migrate=migrate)
    db.create_function("window_charge", 4, window_charge_sql, deterministic=True)
    return db


def _add_columns(db: sqlite3.Connection) -> None:
    """Bring a keys table made by an earlier release up to date."""
    add_columns(db, "api_keys", _ADDED_COLUMNS)
    add_columns(db, "usage_daily", _ADDED_USAGE_COLUMNS)


def _record(row: tuple) -> KeyRecord:
    """A key row (``_RECORD_COLUMNS``) as its record: memoised per store (``SQLiteStore._record``), as the row is
    read per request."""
    return KeyRecord(
        id=row[0], key_hash=row[1], prefix=row[2], name=row[3], rate_limit=row[4],
        scopes=tuple(json.loads(row[5])),
        allowed_models=tuple(json.loads(row[6])) if row[6] else None,
        expires_at=row[7], created_at=row[8], daily_token_limit=row[9], max_concurrent_requests=row[10],
        max_stored_bytes_per_day=row[11],
    )


_errors = sqlite_errors  # every SQLite failure is StoreUnavailable (a 503), never a request let through


_SELECT_BY_HASH = f"SELECT {_RECORD_COLUMNS} FROM api_keys WHERE key_hash = ?"
_UPSERT = (
    "INSERT INTO rate_windows (bucket, state, updated_at) VALUES (?1, window_charge(NULL, ?2, ?3, ?4), ?3)"
    " ON CONFLICT(bucket) DO UPDATE SET state = window_charge(state, ?2, ?3, ?4), updated_at = ?3"
    " RETURNING state"
)
_PEEK = "SELECT window_charge(state, ?1, ?2, 0) FROM rate_windows WHERE bucket = ?3"
_STATE = "SELECT state FROM rate_windows WHERE bucket = ?"
_STORE_STATE = (
    "INSERT INTO rate_windows (bucket, state, updated_at) VALUES (?1, ?2, ?3)"
    " ON CONFLICT(bucket) DO UPDATE SET state = ?2, updated_at = ?3"
)


_DECISION = struct.Struct("<?IIdd")
PING_BUCKET = "ping"  # the rate window ``ping`` writes (charged buckets are named key:..., key-fail:..., admin-fail:...)


def window_charge_sql(state: bytes | None, limit: int, now: float, cost: int) -> bytes:
    """The SQL function behind ``_UPSERT``. The stored value is the last decision followed by the
    window (see ``window.py``), so ``RETURNING state`` hands both back in the same statement."""
    window, d = charge_window(state[_DECISION.size:] if state else None, limit, now, cost)
    return _pack(d, window)


def _pack(d: RateDecision, window: bytes) -> bytes:
    return _DECISION.pack(d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after) + window


def _decision(state: bytes) -> RateDecision:
    allowed, limit, remaining, reset_after, retry_after = _DECISION.unpack_from(state)
    return RateDecision(allowed=allowed, limit=limit, remaining=remaining, reset_after=reset_after,
                        retry_after=retry_after)


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _errors():
            self.admin = _connect(self.path, "FULL", SCHEMA, _add_columns)
            self.db = _connect(self.path, "NORMAL")
        self._waiting: list[Waiter] = []
        self._next_usage_prune = 0.0  # the first flush prunes
        # The store's own, bounded (it was the module's: one cache for every store in the process)
        self._record = lru_cache(maxsize=RECORDS_CACHED)(_record)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    def inflight(self) -> SQLiteInflight:
        """The keys' requests in flight, in this file, on the hot-path connection (the host's clock)."""
        return SQLiteInflight(self.db, time.time)

    def _read(self, row: tuple) -> KeyRecord:
        """A full key row (``_KEY_COLUMNS``) as its record: the cached one, with its ``last_used_at``."""
        record = self._record(row[:-1])
        return record if row[-1] is None else replace(record, last_used_at=row[-1])

    # --- keys -------------------------------------------------------------------------------------
    async def create_key(self, rate_limit: int, **settings: Unpack[NewKey]) -> tuple[str, KeyRecord]:
        secret, record = mint_key(rate_limit, **settings)
        with _errors():
            self.admin.execute(
                f"INSERT INTO api_keys ({_RECORD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.id, record.key_hash, record.prefix, record.name, record.rate_limit,
                 json.dumps(list(record.scopes)),
                 json.dumps(list(record.allowed_models)) if record.allowed_models else None,
                 record.expires_at, record.created_at, record.daily_token_limit, record.max_concurrent_requests,
                 record.max_stored_bytes_per_day),
            )
        return secret, record

    async def get_key(self, key_hash: str) -> KeyRecord | None:
        with _errors():
            row = self.db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return self._read(row) if row else None

    async def get_key_by_id(self, key_id: str) -> KeyRecord | None:
        with _errors():
            row = self.db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return self._read(row) if row else None

    async def update_key(self, key_id: str, changes: KeyChanges) -> KeyRecord | None:
        def run(db: sqlite3.Connection) -> KeyRecord | None:
            row = db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            new = changes.apply(self._read(row))
            db.execute(
                "UPDATE api_keys SET name=?, rate_limit=?, scopes=?, allowed_models=?, expires_at=?, "
                "daily_token_limit=?, max_concurrent=?, max_stored_bytes_per_day=? WHERE id=?",
                (new.name, new.rate_limit, json.dumps(list(new.scopes)),
                 json.dumps(list(new.allowed_models)) if new.allowed_models else None, new.expires_at,
                 new.daily_token_limit, new.max_concurrent_requests, new.max_stored_bytes_per_day, key_id),
            )
            return new

        return write_tx(self.admin, run)

    async def rotate_key(self, key_id: str) -> tuple[str, KeyRecord] | None:
        with _errors():
            row = self.admin.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            old = self._read(row)
            secret, new = new_secret(old)
            # Only if no other worker rotated it since the read: else its secret would be dead on arrival.
            cur = self.admin.execute("UPDATE api_keys SET key_hash = ?, prefix = ? WHERE id = ? AND key_hash = ?",
                                     (new.key_hash, new.prefix, key_id, old.key_hash))
        return (secret, new) if cur.rowcount else None

    async def delete_key(self, key_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,))
            db.execute("DELETE FROM usage_daily WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM usage_models WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM rate_windows WHERE bucket = ?", (f"key:{key_id}",))
            return cur.rowcount > 0

        return write_tx(self.admin, run)

    async def list_keys(self) -> list[KeyRecord]:
        with _errors():
            rows = self.db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        return [self._read(r) for r in rows]

    # --- the hot path -----------------------------------------------------------------------------
    async def authorize(self, key_hash: str, *, scope: str | None, now: float | None = None,
                        hold: Hold | None = None) -> Authorization:
        """Find the key and charge its limit (and, with ``hold``, take its slot). Calls made in the same event-loop
        turn share one write transaction (and one lookup per key): a transaction per request was the largest
        store cost under load. Each request still gets its own exact decision, in arrival order."""
        if now is not None:  # an explicit clock (tests): at once, on its own
            with _errors():
                return self._authorize_group(key_hash, [scope], now, [hold])[0]
        waiter: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        self._waiting.append((key_hash, scope, hold, waiter))
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._authorize_waiting)
        return await waiter

    def _authorize_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        groups = TurnGroups(batch)
        if not groups.by_key:
            return
        now = time.time()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                results = [self._authorize_group(h, groups.scopes(h), now, groups.holds(h)) for h in groups.by_key]
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            failure = StoreUnavailable(f"sqlite: {e}")
            failure.__cause__ = e  # as ``raise ... from e``: the log and /ready name SQLite's reason
            groups.fail(failure)
            return
        groups.answer(results)

    def _authorize_group(self, key_hash: str, scopes: list[str | None], now: float,
                         holds: list[Hold | None] | None = None) -> list[Authorization]:
        """One lookup of the key, then the requests that pass its checks charged in order, in one write; those
        with a ``Hold`` past the key's requests in flight are ``busy`` (not charged), the others take their slot
        (``inflight`` rows) once the rate let them in. The slots the holds give back go first, uncounted."""
        holds = holds or [None] * len(scopes)
        row = self.db.execute(_SELECT_BY_HASH, (key_hash,)).fetchone()
        record = self._record(row) if row else None
        statuses = [check_key(record, scope, now) for scope in scopes]
        if record is not None:
            drop_released(self.db, holds)
        slots = SlotCount.of(self.db, record, holds, now) if record is not None else None
        if slots is not None:
            statuses = slots.refuse_busy(statuses, holds)
        passed = statuses.count("ok") if record is not None else 0
        decisions = iter(self._charge_each(f"key:{record.id}", record.rate_limit, passed, now) if passed else ())
        out = [Authorization(record=record, decision=next(decisions), status="ok")
               if status == "ok" and record is not None else Authorization(record=record, decision=None, status=status)
               for status in statuses]
        return slots.take(self.db, out, holds, now) if slots is not None else out

    def _charge_each(self, bucket: str, limit: int, n: int, now: float) -> list[RateDecision]:
        """``n`` requests one after another (``window.charge_each``): one statement for one request,
        a read and a write for several (inside the turn's write transaction, so no other process
        can charge in between)."""
        if n == 1:
            return [self._charge(bucket, limit, 1, now)]
        assert self.db.in_transaction, "several charges at once need the write transaction"
        row = self.db.execute(_STATE, (bucket,)).fetchone()
        window, decisions = charge_each(row[0][_DECISION.size:] if row else None, limit, now, n)
        self.db.execute(_STORE_STATE, (bucket, _pack(decisions[-1], window), now))
        return decisions

    async def charge(self, bucket: str, limit: int, *, cost: int = 1, now: float | None = None) -> RateDecision:
        with _errors():
            return self._charge(bucket, limit, cost, now_or_clock(now))

    def _charge(self, bucket: str, limit: int, cost: int, now: float) -> RateDecision:
        """One statement: the UPSERT runs ``window_charge`` under SQLite's write lock, so it is atomic
        across every process on the file without an explicit transaction (one execute, no BEGIN/COMMIT)."""
        if cost == 0:
            row = self.db.execute(_PEEK, (limit, now, bucket)).fetchone()
            return _decision(row[0] if row else window_charge_sql(None, limit, now, 0))
        return _decision(self.db.execute(_UPSERT, (bucket, limit, now, cost)).fetchone()[0])

    # --- usage ------------------------------------------------------------------------------------
    async def add_usage(self, deltas: list[UsageDelta]) -> None:
        if not deltas:
            return
        cols = ", ".join(USAGE_FIELDS)
        adds = ", ".join(f"{f} = {f} + excluded.{f}" for f in USAGE_FIELDS)
        def run(db: sqlite3.Connection) -> None:
            for d in deltas:
                exists = db.execute("SELECT 1 FROM api_keys WHERE id = ?", (d.key_id,)).fetchone()
                if not exists:  # deleted meanwhile: its usage goes with it
                    continue
                counts = [getattr(d.counts, f) for f in USAGE_FIELDS]
                if any(counts):  # all zero adds no day (as on Redis): only the last use moves
                    db.execute(
                        f"INSERT INTO usage_daily (key_id, day, {cols}) VALUES (?,?,?,?,?,?,?)"
                        f" ON CONFLICT(key_id, day) DO UPDATE SET {adds}",
                        (d.key_id, d.day, *counts),
                    )
                if d.counts.models:
                    db.executemany(_ADD_MODEL, [
                        {"key": d.key_id, "day": d.day, "model": name, "other": OTHER, "cap": MODELS_PER_DAY,
                         **{f: getattr(row, f) for f in MODEL_FIELDS}} for name, row in d.counts.models.items()])
                db.execute(
                    "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                    (d.last_used_at, d.key_id),
                )
            # In the same transaction: after the commit, a prune that met a busy lock failed a flush whose
            # usage was stored, and the recorder wrote that usage again (counted twice).
            self._prune_windows(time.time())
            self._prune_usage(max(d.last_used_at for d in deltas))

        write_tx(self.db, run)

    def _prune_windows(self, now: float) -> None:
        """Drop windows idle for over a minute (they hold nothing); piggybacks on the usage flush."""
        self.db.execute("DELETE FROM rate_windows WHERE updated_at < ?", (now - 62,))

    def _prune_usage(self, now: float) -> None:
        """Drop per-day usage past ``USAGE_DAYS_KEPT`` (at ``now``, the flush's latest use), at most once an
        ``USAGE_PRUNE_EVERY_S``; piggybacks on the usage flush, as Redis's on a key's first use of a day."""
        if now < self._next_usage_prune:
            return
        cols, oldest = ", ".join(USAGE_FIELDS), oldest_usage_day(now)
        adds = ", ".join(f"{f} = {f} + excluded.{f}" for f in USAGE_FIELDS)
        # the pruned days' counts are summed into one row, so the totals (sums over the rows) stay whole
        self.db.execute(f"INSERT INTO usage_daily (key_id, day, {cols}) SELECT key_id, ?, "
                        f"{', '.join(f'SUM({f})' for f in USAGE_FIELDS)} FROM usage_daily WHERE day < ? AND day != ? "
                        f"GROUP BY key_id ON CONFLICT(key_id, day) DO UPDATE SET {adds}",
                        (FOLDED_DAY, oldest, FOLDED_DAY))
        self.db.execute("DELETE FROM usage_daily WHERE day < ? AND day != ?", (oldest, FOLDED_DAY))
        self.db.execute("DELETE FROM usage_models WHERE day < ?", (oldest,))  # no totals by model: nothing to fold
        self._next_usage_prune = now + USAGE_PRUNE_EVERY_S

    async def usage(self, key_id: str, *, since_day: str | None = None) -> UsageReport:
        cols = ", ".join(USAGE_FIELDS)
        with _errors():
            self.db.execute("BEGIN")  # one snapshot: another worker's flush between the reads tore them apart
            try:
                rows = self.db.execute(
                    f"SELECT day, {cols}, stored_bytes FROM usage_daily WHERE key_id = ? AND day >= ? AND day != ? "
                    "ORDER BY day",
                    (key_id, since_day or "", FOLDED_DAY),
                ).fetchall()
                total_row = self.db.execute(
                    f"SELECT {', '.join(f'COALESCE(SUM({f}), 0)' for f in USAGE_FIELDS)} FROM usage_daily "
                    "WHERE key_id = ?", (key_id,),
                ).fetchone()
                last = self.db.execute("SELECT last_used_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                models = self.db.execute(
                    f"SELECT day, model, {', '.join(MODEL_FIELDS)} FROM usage_models WHERE key_id = ? AND day >= ?",
                    (key_id, since_day or ""),
                ).fetchall()
            finally:
                self.db.execute("COMMIT")
        days = {r[0]: counts for r in rows if (counts := UsageCounts(*r[1:-1])).counted()}
        for day, model, *counted in models:
            if day in days:  # a day's models only with the day (a day with no request counted is not listed)
                days[day].models[model] = ModelCounts(*counted)
        return UsageReport(key_id=key_id, totals=UsageCounts(*total_row), days=days,
                           last_used_at=last[0] if last else None, stored_bytes={r[0]: r[-1] for r in rows if r[-1]})

    async def day_tokens(self, key_id: str, day: str) -> int:
        with _errors():
            row = self.db.execute("SELECT prompt_tokens + completion_tokens FROM usage_daily WHERE key_id = ? AND day = ?",
                                  (key_id, day)).fetchone()
        return int(row[0]) if row else 0

    async def add_stored_bytes(self, key_id: str, day: str, size: int, *, limit: int) -> StoredBytes:
        with _errors():
            row = self.db.execute(_ADD_STORED_BYTES, {"key": key_id, "day": day, "size": size, "limit": limit}
                                  ).fetchone()
            if row is not None:
                return StoredBytes(True, int(row[0]))
            gone = self.db.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone() is None
        return StoredBytes(gone, 0 if gone else await self.day_stored_bytes(key_id, day))

    async def day_stored_bytes(self, key_id: str, day: str) -> int:
        with _errors():
            row = self.db.execute("SELECT stored_bytes FROM usage_daily WHERE key_id = ? AND day = ?",
                                  (key_id, day)).fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> None:
        """A small write, committed: every authenticated request writes (its rate-limit charge). ``SELECT 1``
        touched neither the file nor its lock, so /ready said ready while a lock held elsewhere made every
        request a 503; the write lock taken and let go (nothing written) then missed a full disk, which
        fails a commit, not a lock. The row is a rate window no request charges, pruned as any idle one."""
        with _errors():
            self.db.execute(_STORE_STATE, (PING_BUCKET, b"", time.time()))

    async def eviction_policy(self) -> None:
        """Nothing to read: a file evicts nothing."""
        return None

    async def persistence(self) -> None:
        """Nothing to read: a file is on disk (its writes are fsynced as the store table says)."""
        return None

    async def marker(self, *, seen: bool) -> None:
        """Nothing to watch: a file does not come back empty behind the API's back (a missing one is made, with
        a WARNING, at start)."""
        return None

    async def close(self) -> None:
        self.db.close()
        self.admin.close()
