"""Sticky model sessions: one miner pinned to one API key, shared by every worker and host.

A key has at most one active session: opening a new one replaces the old one
atomically. Sessions expire at ``expires_at``; ``repin`` moves a session to
another miner (failover) without changing its id or expiry. ``repin`` and
``close`` take ``if_pinned``: they act only while the session still pins that
miner, so two workers (or hosts) that saw the same miner fail move it once.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from shared.store import forgotten
from shared.store.base import RedisBacked, RedisLink, RedisLinks, open_by_url
from shared.store.forgotten import KeyForgotten
from shared.store.sqlite_tables import SQLiteTables, expiring_table


@dataclass(frozen=True)
class Session:
    id: str
    key_id: str
    model: str
    uid: int
    hotkey: str
    created_at: float
    expires_at: float
    failover: bool = False

    def public(self) -> dict[str, Any]:
        return {"session_id": self.id, "model": self.model, "uid": self.uid, "expires_at": self.expires_at,
                "created_at": self.created_at, "failover": self.failover}


Pin = tuple[int, str]
"""A session's miner: (uid, hotkey)."""


def pin_of(session: Session) -> Pin:
    return session.uid, session.hotkey


def new_session_id() -> str:
    return "sess-" + secrets.token_urlsafe(16)


class SessionStore(Protocol):
    async def open(self, key_id: str, model: str, uid: int, hotkey: str, *, duration: float,
                   failover: bool) -> Session: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def for_key(self, key_id: str) -> Session | None: ...

    async def repin(self, session_id: str, uid: int, hotkey: str, *,
                    if_pinned: Pin | None = None) -> Session | None:
        """Pin (uid, hotkey), keeping id and expiry; with ``if_pinned``, only while the session still pins
        that miner. The session as stored afterwards (moved by another caller, it is returned as that
        caller left it); None if it is gone."""
        ...

    async def close(self, session_id: str, *, if_pinned: Pin | None = None) -> bool:
        """End the session (with ``if_pinned``, only while it still pins that miner); whether it ended."""
        ...

    async def active(self) -> list[Session]: ...

    async def forget_key(self, key_id: str, *, marked: bool = False) -> bool:
        """A deleted key's session closed, and a session its requests still in flight would open after refused
        (``open`` raises ``KeyForgotten``, for ``forgotten.FORGOTTEN_FOR_S``); whether one was closed. ``marked``:
        another store's ``forget_key`` set the key's forgotten mark already (``forgotten.py``)."""
        ...

    async def aclose(self) -> None: ...


SCHEMA = expiring_table("model_sessions", index="model_sessions_key", on="key_id") + forgotten.SCHEMA


class SQLiteSessionStore(SQLiteTables):
    label = "sqlite sessions"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    async def open(self, key_id: str, model: str, uid: int, hotkey: str, *, duration: float,
                   failover: bool) -> Session:
        now = time.time()
        session = Session(new_session_id(), key_id, model, uid, hotkey, now, now + duration, failover)

        def run(db: sqlite3.Connection) -> None:
            forgotten.check_writable(db, key_id, now)
            db.execute("DELETE FROM model_sessions WHERE key_id = ?", (key_id,))
            db.execute("INSERT INTO model_sessions (id, key_id, data, expires_at) VALUES (?,?,?,?)",
                       (session.id, key_id, json.dumps(asdict(session)), session.expires_at))

        self._tx(run)
        return session

    async def get(self, session_id: str) -> Session | None:
        rows = self._query("SELECT data FROM model_sessions WHERE id = ? AND expires_at > ?", (session_id, time.time()))
        return Session(**json.loads(rows[0][0])) if rows else None

    async def for_key(self, key_id: str) -> Session | None:
        rows = self._query("SELECT data FROM model_sessions WHERE key_id = ? AND expires_at > ?", (key_id, time.time()))
        return Session(**json.loads(rows[0][0])) if rows else None

    async def repin(self, session_id: str, uid: int, hotkey: str, *,
                    if_pinned: Pin | None = None) -> Session | None:
        def run(db: sqlite3.Connection) -> Session | None:
            current = self._read(db, session_id)
            if current is None or (if_pinned is not None and pin_of(current) != if_pinned):
                return current
            moved = replace(current, uid=uid, hotkey=hotkey)
            db.execute("UPDATE model_sessions SET data = ? WHERE id = ?", (json.dumps(asdict(moved)), session_id))
            return moved

        return self._tx(run)

    async def close(self, session_id: str, *, if_pinned: Pin | None = None) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            if if_pinned is not None:
                current = self._read(db, session_id)
                if current is None or pin_of(current) != if_pinned:
                    return False
            return db.execute("DELETE FROM model_sessions WHERE id = ?", (session_id,)).rowcount > 0

        return self._tx(run)

    @staticmethod
    def _read(db: sqlite3.Connection, session_id: str) -> Session | None:
        """The live session ``session_id`` inside a transaction (expired: None)."""
        row = db.execute("SELECT data FROM model_sessions WHERE id = ? AND expires_at > ?",
                         (session_id, time.time())).fetchone()
        return Session(**json.loads(row[0])) if row else None

    async def forget_key(self, key_id: str, *, marked: bool = False) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            forgotten.mark_first(db, key_id, marked=marked)
            return db.execute("DELETE FROM model_sessions WHERE key_id = ?", (key_id,)).rowcount > 0

        return self._tx(run)

    async def active(self) -> list[Session]:
        now = time.time()

        def sweep(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM model_sessions WHERE expires_at <= ?", (now,))
            forgotten.purge(db, now)  # the marks' one sweep: every worker runs it, responses kept or not

        self._tx(sweep)
        return [Session(**json.loads(r[0])) for r in self._query("SELECT data FROM model_sessions", ())]

    async def aclose(self) -> None:
        self._close_db()


# The session's times come from Redis's clock (TIME), never the API host's: hosts whose clocks disagree
# agree on when a session ends, as Redis expires it. ARGV[1] is the session's JSON without its times
# (ending in '}'), ARGV[4] its duration in microseconds; the times are written as decimal text
# (seconds.micros, exact: Lua's own number formatting keeps 14 digits) and returned. KEYS[4] is the key's forgotten
# mark: a session of a key deleted as its request ran is not opened (false).
_OPEN = """
if redis.call('EXISTS', KEYS[4]) == 1 then return false end
local t = redis.call('TIME')
local created_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expires_us = created_us + tonumber(ARGV[4])
local function text(us) return string.format('%d.%06d', math.floor(us / 1000000), us % 1000000) end
local created, expires = text(created_us), text(expires_us)
local body = string.sub(ARGV[1], 1, -2) .. ', "created_at": ' .. created .. ', "expires_at": ' .. expires .. '}'
local at = string.format('%.0f', math.ceil(expires_us / 1000))
local old = redis.call('GET', KEYS[1])
if old then
  redis.call('DEL', ARGV[3] .. old)
  redis.call('SREM', KEYS[3], old)
end
redis.call('SET', KEYS[2], body, 'PXAT', at)
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', at)
redis.call('SADD', KEYS[3], ARGV[2])
return {created, expires}
"""

# Re-pin as compare-and-set: the new JSON is made in Python from the stored one. Lua's cjson re-encoded
# the session with 14 significant digits, so expires_at and created_at changed on Redis only.
_REPIN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return ARGV[2]
"""

# The pointer and the session it names, read in one step: read apart, an open() between them (the key's
# new session replacing the old) left the pointer naming a deleted session, and a chat request sent then
# ran without the key's session (SQLite reads both in one query).
_FOR_KEY = """
local sid = redis.call('GET', KEYS[1])
if not sid then return false end
return redis.call('GET', ARGV[1] .. sid)
"""

# ARGV[3], ARGV[4]: the uid and hotkey the session must still pin ('' for any).
_CLOSE = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 0
end
local s = cjson.decode(raw)
if ARGV[3] ~= '' and (tonumber(ARGV[3]) ~= s['uid'] or ARGV[4] ~= s['hotkey']) then return 0 end
redis.call('SREM', KEYS[3], ARGV[1])
local ptr = ARGV[2] .. s['key_id']
if redis.call('GET', ptr) == ARGV[1] then redis.call('DEL', ptr) end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisSessionStore(RedisBacked):
    """Sessions as JSON strings with PXAT expiry, a per-key pointer and an index set for sweeps.

    Expiry is Redis's alone: ``open`` takes the times from Redis's clock, and a session is live while
    Redis holds it (its key expires at ``expires_at``). Each API host's own clock decided before (the
    opening host's ``now``, every reading host's ``expires_at > now``): with clocks a minute apart, a
    host saw a session end a minute early, or live a minute after it ended elsewhere.
    """

    LABEL = "redis sessions"  # StoreUnavailable's word for this store

    def __init__(self, link: RedisLink, *, namespace: str = "sn1") -> None:
        super().__init__(link, namespace=namespace)
        client = self.r
        self._open = client.register_script(_OPEN)
        self._repin = client.register_script(_REPIN)
        self._close = client.register_script(_CLOSE)
        self._for_key = client.register_script(_FOR_KEY)

    def _skey(self, session_id: str) -> str:
        return f"{self.ns}:session:{session_id}"

    def _kkey(self, key_id: str) -> str:
        return f"{self.ns}:session_by_key:{key_id}"

    @property
    def _index(self) -> str:
        return f"{self.ns}:sessions"

    @staticmethod
    def _decode(raw: Any) -> Session | None:
        """The stored session; no clock is read: Redis returns only a session its clock has not expired."""
        if not raw:
            return None
        data = json.loads(raw)
        data["uid"] = int(data["uid"])
        data["failover"] = bool(data["failover"])
        return Session(**data)

    async def open(self, key_id: str, model: str, uid: int, hotkey: str, *, duration: float,
                   failover: bool) -> Session:
        session_id = new_session_id()
        timeless = {"id": session_id, "key_id": key_id, "model": model, "uid": uid, "hotkey": hotkey,
                    "failover": failover}
        opened = await self._call(self._open(
            keys=[self._kkey(key_id), self._skey(session_id), self._index, forgotten.redis_name(self.ns, key_id)],
            args=[json.dumps(timeless), session_id, f"{self.ns}:session:", round(duration * 1_000_000)],
        ))
        if opened is None:
            raise KeyForgotten(key_id)
        created, expires = opened
        return Session(session_id, key_id, model, uid, hotkey, float(created), float(expires), failover)

    async def get(self, session_id: str) -> Session | None:
        return self._decode(await self._call(self.r.get(self._skey(session_id))))

    async def for_key(self, key_id: str) -> Session | None:
        return self._decode(await self._call(self._for_key(keys=[self._kkey(key_id)], args=[self._skey("")])))

    async def repin(self, session_id: str, uid: int, hotkey: str, *,
                    if_pinned: Pin | None = None) -> Session | None:
        for _ in range(5):  # another worker re-pinned it between our read and write: read again
            raw = await self._call(self.r.get(self._skey(session_id)))
            session = self._decode(raw)
            if session is None or (if_pinned is not None and pin_of(session) != if_pinned):
                return session
            moved = replace(session, uid=uid, hotkey=hotkey)
            if await self._call(self._repin(keys=[self._skey(session_id)], args=[raw, json.dumps(asdict(moved))])):
                return moved
        return None

    async def close(self, session_id: str, *, if_pinned: Pin | None = None) -> bool:
        uid, hotkey = ("", "") if if_pinned is None else (str(if_pinned[0]), if_pinned[1])
        out = await self._call(self._close(keys=[self._skey(session_id), "", self._index],
                                           args=[session_id, self._kkey(""), uid, hotkey]))
        return bool(out)

    async def forget_key(self, key_id: str, *, marked: bool = False) -> bool:
        await forgotten.redis_mark_first(self, key_id, marked=marked)  # first: an open after it is refused
        session = await self.for_key(key_id)
        return session is not None and await self.close(session.id)

    async def active(self) -> list[Session]:
        out = []
        for sid in await self._call(self.r.smembers(self._index)):
            sid = sid.decode() if isinstance(sid, bytes) else sid
            session = await self.get(sid)
            if session is None:
                await self._call(self.r.srem(self._index, sid))
            else:
                out.append(session)
        return out


def open_sessions(url: str, *, namespace: str = "sn1", links: RedisLinks | None = None) -> SessionStore:
    return open_by_url(url, SQLiteSessionStore, RedisSessionStore, namespace=namespace, links=links)
