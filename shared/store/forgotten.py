"""A deleted key's forgotten mark: what refuses the writes its requests still in flight make after the delete.

Deleting a key deletes its stored responses, its conversations and its session (each store's ``forget_key``), but a
request of that key still being answered then, on this worker or another worker or host sharing the store, could
write after it: a response, a new conversation, a turn added to one, a session opened. Each was kept its usual day
(a session up to its week), though no key could ever use it again. So ``forget_key`` marks the key forgotten first
(in the same SQLite transaction as its deletes; on Redis before its SCANs, which could miss a name written as they
run). A key's delete has the first store that answers set it and tells the others it is set (``marked``): one
write, before anything of the key is deleted. Each write of a key's stored responses, conversations and session
reads the mark in the same step as it writes (the same transaction, the same Lua script): one that comes after the
delete keeps nothing.

One mark per key, shared by the three stores (they live in one place, ``STORE_URL``): a row of ``forgotten_keys`` on
SQLite, ``{ns}:response_forgotten:{key id}`` on Redis (named when only stored responses read it: the name stays,
so a fleet part upgraded still refuses what the other part's deletes forgot). It goes after ``FORGOTTEN_FOR_S``.
"""

from __future__ import annotations

import sqlite3
import time

from shared.store.base import RedisBacked, ttl_ms

# How long a deleted key's writes are refused after ``forget_key``: far past any request of it still being answered
# then (a request's deadline is minutes at most, a background one's too); its mark then goes, as ids never come back.
FORGOTTEN_FOR_S = 86_400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS forgotten_keys (
    key_id TEXT PRIMARY KEY,
    until REAL NOT NULL
);
"""


class KeyForgotten(Exception):
    """A write refused: its key was deleted (``forget_key``) while the request that made it was being answered."""


def mark_first(db: sqlite3.Connection, key_id: str, *, marked: bool) -> None:
    """A SQLite ``forget_key``'s first step, in the transaction that deletes what the key kept: mark ``key_id``
    forgotten, unless another store's ``forget_key`` of this delete set it already (``marked``)."""
    if not marked:
        db.execute("INSERT OR REPLACE INTO forgotten_keys (key_id, until) VALUES (?,?)",
                   (key_id, time.time() + FORGOTTEN_FOR_S))


def is_forgotten(db: sqlite3.Connection, key_id: str, now: float) -> bool:
    """Whether ``key_id`` is marked forgotten (inside the write's own transaction: no delete comes in between)."""
    return db.execute("SELECT 1 FROM forgotten_keys WHERE key_id = ? AND until > ?", (key_id, now)).fetchone() is not None


def check_writable(db: sqlite3.Connection, key_id: str, now: float) -> None:
    """``KeyForgotten`` when ``key_id`` is marked forgotten (read in the write's own transaction, which
    ``forget_key``'s cannot come between): its write would be kept for no key to read."""
    if is_forgotten(db, key_id, now):
        raise KeyForgotten(key_id)


def purge(db: sqlite3.Connection, now: float) -> None:
    """Drop the marks of keys forgotten long enough (a row per deleted key: a small table). The session sweep's
    (``SQLiteSessionStore.active``) is the one call: every API worker runs it each ``AVAILABILITY_REFRESH_SECONDS``
    whether responses are kept or not, so the responses' and conversations' purges, which also ran it, no longer
    do (a mark past its time refuses nothing: ``is_forgotten`` reads ``until``, so a late sweep keeps a row, no
    more)."""
    db.execute("DELETE FROM forgotten_keys WHERE until <= ?", (now,))


def redis_name(namespace: str, key_id: str) -> str:
    """The Redis name of ``key_id``'s mark, which the stores' Lua scripts check before they write."""
    return f"{namespace}:response_forgotten:{key_id}"


async def redis_mark_first(store: RedisBacked, key_id: str, *, marked: bool) -> None:
    """A Redis ``forget_key``'s first step, before its SCANs (which could miss a name written as they run): mark
    ``key_id`` forgotten for ``FORGOTTEN_FOR_S``, unless another store's ``forget_key`` of this delete set it
    already (``marked``)."""
    if not marked:
        await store.gate.call(store.r.set(redis_name(store.ns, key_id), 1, px=ttl_ms(FORGOTTEN_FOR_S)))
