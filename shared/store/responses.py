"""Stored Responses API responses, so that ``previous_response_id`` works on every worker and host.

A stored response is visible to the API key that made it and to no other: each
lookup names the key, and another key's id reads as an unknown one. What is kept
is the final response object and the conversation it answered (as Responses
input items), one JSON text per response, until ``RESPONSES_RETENTION_SECONDS``
have passed: SQLite (one host) drops expired rows on read and a bounded batch
from time to time; Redis (a fleet) sets the key's TTL and expires it itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.store.base import RedisBacked, open_by_url, redis_call
from shared.store.sqlite_tables import SQLiteTables, expiring_table

# A response whose stored form (its object and the whole conversation before it) is larger than this is
# not stored: a conversation grows by its answers each turn, and one read must stay a small read. The
# answer itself still goes out, echoing ``store: false``.
MAX_STORED_BYTES = 1 << 20
# SQLite purges at most this many expired rows at once, at most once a PURGE_EVERY_S per process, on a write:
# never a scan of the whole table on a request's path.
PURGE_BATCH = 200
PURGE_EVERY_S = 60.0
LABEL = "redis responses"  # StoreUnavailable's word for this store
SCAN_BATCH = 500  # names a deleted key's purge reads and deletes at once (Redis)


@dataclass(frozen=True)
class StoredResponse:
    id: str
    key_id: str
    response: dict[str, Any]  # the final response object, as it was sent
    items: list[dict[str, Any]]  # the conversation it answered, as input items (each with an id)


def encode(response: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """The stored form of a response: measured by the caller against ``MAX_STORED_BYTES`` before it is put."""
    return json.dumps({"response": response, "items": items}, separators=(",", ":"), ensure_ascii=False)


def fits(data: str) -> bool:
    """Whether a stored form is within ``MAX_STORED_BYTES`` (its UTF-8 size, as SQLite and Redis keep it)."""
    return len(data) <= MAX_STORED_BYTES and len(data.encode()) <= MAX_STORED_BYTES


def decode(response_id: str, key_id: str, raw: str | bytes) -> StoredResponse:
    data = json.loads(raw)
    return StoredResponse(response_id, key_id, data["response"], data["items"])


class ResponseStore(Protocol):
    async def put(self, key_id: str, response_id: str, data: str, *, retention: float) -> None:
        """Keep ``data`` (``encode``'s) as ``response_id`` of ``key_id`` for ``retention`` seconds."""
        ...

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        """The response if ``key_id`` made it and it has not expired; else None (as for an unknown id)."""
        ...

    async def delete(self, key_id: str, response_id: str) -> bool:
        """Delete ``key_id``'s response; whether there was one."""
        ...

    async def forget_key(self, key_id: str) -> int:
        """Delete every response ``key_id`` made (its key was deleted: its conversations go with it, not at
        their expiry); how many there were."""
        ...

    async def aclose(self) -> None: ...


# By id (each lookup also names the key, checked on the row); the indexes serve the bounded purge and
# a deleted key's ``forget_key``.
SCHEMA = expiring_table("stored_responses", index="stored_responses_expiry", on="expires_at") + \
    "CREATE INDEX IF NOT EXISTS stored_responses_key ON stored_responses (key_id);\n"


class SQLiteResponseStore(SQLiteTables):
    label = "sqlite responses"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)
        self._next_purge = 0.0  # per instance (per worker): when this one next deletes expired rows

    async def put(self, key_id: str, response_id: str, data: str, *, retention: float) -> None:
        now = time.time()
        purge = now >= self._next_purge

        def run(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR REPLACE INTO stored_responses (id, key_id, data, expires_at) VALUES (?,?,?,?)",
                       (response_id, key_id, data, now + retention))
            return self._purge(db, now) if purge else 0

        purged = self._tx(run)
        if purge:  # a full batch: more may be waiting, so the next write purges again
            self._next_purge = now if purged >= PURGE_BATCH else now + PURGE_EVERY_S

    @staticmethod
    def _purge(db: sqlite3.Connection, now: float) -> int:
        """Delete up to ``PURGE_BATCH`` expired rows (by the expiry index); how many went."""
        return db.execute("DELETE FROM stored_responses WHERE id IN (SELECT id FROM stored_responses "
                          "WHERE expires_at <= ? LIMIT ?)", (now, PURGE_BATCH)).rowcount

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        rows = self._query("SELECT data, expires_at FROM stored_responses WHERE id = ? AND key_id = ?",
                           (response_id, key_id))
        if not rows:
            return None
        data, expires_at = rows[0]
        if expires_at <= time.time():  # expired: gone now, as Redis would have it
            self._tx(lambda db: db.execute("DELETE FROM stored_responses WHERE id = ? AND expires_at <= ?",
                                           (response_id, expires_at)))
            return None
        return decode(response_id, key_id, data)

    async def delete(self, key_id: str, response_id: str) -> bool:
        now = time.time()
        return self._tx(lambda db: db.execute(
            "DELETE FROM stored_responses WHERE id = ? AND key_id = ? AND expires_at > ?",
            (response_id, key_id, now)).rowcount > 0)

    async def forget_key(self, key_id: str) -> int:
        return self._tx(lambda db: db.execute("DELETE FROM stored_responses WHERE key_id = ?", (key_id,)).rowcount)

    async def aclose(self) -> None:
        self._close_db()


class RedisResponseStore(RedisBacked):
    """One string per response, named by its key and id (``{ns}:response:{key_id}:{id}``), with Redis's TTL:
    another key's id is simply not there, and Redis expires what is old by its own clock."""

    def _key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response:{key_id}:{response_id}"

    async def put(self, key_id: str, response_id: str, data: str, *, retention: float) -> None:
        await redis_call(self.r.set(self._key(key_id, response_id), data, px=max(1, round(retention * 1000))), LABEL)

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        raw = await redis_call(self.r.get(self._key(key_id, response_id)), LABEL)
        return decode(response_id, key_id, raw) if raw else None

    async def delete(self, key_id: str, response_id: str) -> bool:
        return bool(await redis_call(self.r.delete(self._key(key_id, response_id)), LABEL))

    async def forget_key(self, key_id: str) -> int:
        """A SCAN of the key's names (an admin's rare call, in batches: never a KEYS that blocks Redis)."""
        return await redis_call(forget_matching(self.r, glob_escaped(self._key(key_id, "")) + "*"), LABEL)

    async def aclose(self) -> None:
        await self.r.aclose()


async def forget_matching(client: Any, pattern: str) -> int:
    """Delete every name ``pattern`` matches, by a batched SCAN (never a KEYS that blocks Redis); how many."""
    gone, batch = 0, []
    async for name in client.scan_iter(match=pattern, count=SCAN_BATCH):
        batch.append(name)
        if len(batch) >= SCAN_BATCH:
            gone, batch = gone + await client.delete(*batch), []
    return gone + (await client.delete(*batch) if batch else 0)


def glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis ``MATCH`` pattern (a namespace may hold ``*``, ``?`` or ``[``)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def open_responses(url: str, *, namespace: str = "sn1") -> ResponseStore:
    return open_by_url(url, SQLiteResponseStore, RedisResponseStore.from_url, namespace=namespace)
