"""OpenAI's conversation objects (``/v1/conversations``, ``conversation`` on ``POST /v1/responses``).

A conversation is an ordered list of Responses API items under an id, its API
key's alone (each lookup names the key; another key's id reads as unknown),
with metadata. It is kept beside the stored responses, as they are: SQLite (one
host) in two tables, Redis (a fleet) in a hash and a list per conversation, and
it expires ``RESPONSES_RETENTION_SECONDS`` after its last write (every write
refreshes it: a conversation in use does not vanish mid-dialogue).

A conversation also names its last stored turn (``last``: an opaque text its
response's turn wrote with its items, ``append``'s ``last``), so that the next
turn's stored response is made a part after it without reading that turn's
stored response (``turn_items``). A record written before 2026-12-07, or by a
worker of that release, has none, or an older one: the caller checks it against
the items and falls back to its lookup (``responses_state.last_turn``).

Two workers may append to one conversation at once (two turns sent together, an
agent adding items while a response is being kept): an append is one SQLite
``BEGIN IMMEDIATE`` transaction, or one Lua script in Redis, so neither loses
the other's items, and the size bound is checked against what is really there.

A response's turn that the store reported it could not take may have landed all
the same (a Redis call that timed out was read and run by Redis; it may even run
later, when a stalled Redis resumes). The caller is told to send the turn again,
so ``withdraw`` takes such a turn out, and fences it (Redis): its write, should it
come later, then adds nothing. A SQLite write that fails is rolled back: it never
lands later, and needs no fence.

A deleted key's conversations go with it (``forget_key``), and a write of that
key that comes after (a request of it still in flight then, on any worker or
host: a new conversation, items, a response's turn) is refused with
``KeyForgotten``, for ``forgotten.FORGOTTEN_FOR_S`` (its key's forgotten mark,
read in the write's own transaction or script): kept, it stayed its usual day
for no key to read.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from shared.store import forgotten
from shared.store.base import RedisBacked, RedisLink, RedisLinks, StoreUnavailable, open_by_url, ttl_ms
from shared.store.forgotten import KeyForgotten
from shared.store.responses import PURGE_EVERY_S, forget_matching, glob_escaped
from shared.store.sqlite_tables import RECLAIM_AGAIN_S, SQLiteTables, add_columns, expiring_table

# The items of one conversation, as stored (their UTF-8 JSON), may not exceed this: every turn sends the
# whole conversation to the miners, and one read must stay a small read (as for a stored response).
MAX_CONVERSATION_BYTES = 1 << 20
# What a conversation id may look like (ours: ``conv_`` and 32 hex digits). Anything else is unknown
# without a lookup; Redis key names are built from it, so no ``:`` or glob character gets in.
CONVERSATION_ID = re.compile(r"conv_[A-Za-z0-9_-]{1,128}")
PURGE_BATCH = 100  # SQLite: expired conversations deleted at once, at most once a PURGE_EVERY_S per process
T = TypeVar("T")


@dataclass(frozen=True)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, str]
    size: int  # the UTF-8 bytes of its stored items

    def out(self) -> dict[str, Any]:
        """OpenAI's ``conversation`` object."""
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata}


@dataclass(frozen=True)
class Appended:
    """The outcome of an append: ``size`` is the conversation's size after it (or what it would have been,
    when ``full``); ``found`` False: no such conversation for this key."""

    found: bool
    full: bool = False
    size: int = 0
    withdrawn: bool = False  # nothing added: the turn (``fence``) was withdrawn before this write came


def valid_id(conversation_id: str) -> bool:
    """Whether ``conversation_id`` could be one of ours (one that is not is unknown, not looked up)."""
    return CONVERSATION_ID.fullmatch(conversation_id) is not None


def encode_item(item: dict[str, Any]) -> str:
    """An item's stored form, whose UTF-8 size counts against ``MAX_CONVERSATION_BYTES``."""
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False)


def size_of(encoded: list[str]) -> int:
    return sum(len(e.encode()) for e in encoded)


def _header(created_at: int, metadata: dict[str, str]) -> str:
    return json.dumps({"created_at": created_at, "metadata": metadata}, separators=(",", ":"), ensure_ascii=False)


def _conversation(conversation_id: str, header: str | bytes, size: int) -> Conversation:
    data = json.loads(header)
    return Conversation(conversation_id, data["created_at"], data["metadata"], size)


class ConversationStore(Protocol):
    """Each write (``create``, ``append``, ``set_metadata``, ``delete_item``) of a key deleted as it was made raises
    ``KeyForgotten`` and keeps nothing (``forget_key``)."""

    async def create(self, key_id: str, conversation: Conversation, items: list[str], *, retention: float) -> None:
        """Keep a new conversation with its first items (``encode_item``'s; the caller checked the bound)."""
        ...

    async def get(self, key_id: str, conversation_id: str) -> Conversation | None:
        """The conversation if ``key_id`` made it and it has not expired; else None."""
        ...

    async def items(self, key_id: str, conversation_id: str) -> list[dict[str, Any]] | None:
        """Its items, oldest first; None: no such conversation."""
        ...

    async def turn_items(self, key_id: str, conversation_id: str) -> tuple[list[dict[str, Any]], str | None] | None:
        """Its items, oldest first, and its ``last`` as the latest ``append`` given one wrote it (None: none was, or
        the record is older than the field), read together; None: no such conversation."""
        ...

    async def append(self, key_id: str, conversation_id: str, items: list[str], *, retention: float,
                     max_bytes: int | None, once: bool = False, fence: str | None = None,
                     last: str | None = None) -> Appended:
        """Add items at its end, atomically: none is added when the result would exceed ``max_bytes``.
        ``once``: none either when it already ends with exactly these items (a write asked again after a
        failure that may have landed after all, as a Redis call that timed out). ``fence``: the turn's name
        (its response's id); none is added once ``withdraw`` named it. ``last``: kept as its ``last`` with the
        items (or when ``once`` found them there); "" takes its ``last`` away; None leaves it."""
        ...

    async def withdraw(self, key_id: str, conversation_id: str, items: list[str], *, fence: str,
                       retention: float) -> int | None:
        """Take out a turn whose write was reported failed: each of ``items`` (their exact stored forms, each
        with an id of its own) wherever it is, and an ``append`` fenced with ``fence`` adds nothing from now
        on (for ``retention`` seconds). How many were there (0: the write had not landed); None: no such
        conversation (its key's deleted included: it needs no fence, as its writes are refused)."""
        ...

    async def set_metadata(self, key_id: str, conversation_id: str, metadata: dict[str, str], *,
                           retention: float) -> bool:
        """Replace its metadata; whether there was such a conversation."""
        ...

    async def delete_item(self, key_id: str, conversation_id: str, item_id: str, *, retention: float) -> bool | None:
        """Delete one item by id: True, False (no such item) or None (no such conversation)."""
        ...

    async def delete(self, key_id: str, conversation_id: str) -> bool:
        """Delete the conversation and its items; whether there was one."""
        ...

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        """Delete every conversation of a deleted key, and refuse its writes from now on (``KeyForgotten``, for
        ``forgotten.FORGOTTEN_FOR_S``: a request of it still in flight may yet write); how many (SQLite) or names
        (Redis) went. ``marked``: another store's ``forget_key`` set the key's forgotten mark already
        (``forgotten.py``)."""
        ...

    async def aclose(self) -> None: ...


SCHEMA = expiring_table("conversations", index="conversations_expiry", on="expires_at") + """
CREATE INDEX IF NOT EXISTS conversations_key ON conversations (key_id);
CREATE TABLE IF NOT EXISTS conversation_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    data TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS conversation_items_of ON conversation_items (conversation_id, seq);
""" + forgotten.SCHEMA
# Added 2026-12-07, to a table made before too: the conversation's last stored turn (``append``'s ``last``; NULL: none
# named yet, or named by an earlier release's worker, which neither writes nor reads it).
LAST_COLUMN = {"last_turn": "TEXT"}


class SQLiteConversationStore(SQLiteTables):
    """A row per conversation (its header as ``data``) and a row per item, in order by ``seq``."""

    label = "sqlite conversations"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA, migrate=lambda db: add_columns(db, "conversations", LAST_COLUMN))
        self._next_purge = 0.0  # per instance (per worker): when this one next deletes expired conversations

    async def create(self, key_id: str, conversation: Conversation, items: list[str], *, retention: float) -> None:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            forgotten.check_writable(db, key_id, now)
            db.execute("INSERT INTO conversations (id, key_id, data, expires_at) VALUES (?,?,?,?)",
                       (conversation.id, key_id, _header(conversation.created_at, conversation.metadata),
                        now + retention))
            self._insert(db, conversation.id, items)
            return self._maybe_purge(db, now)

        self._after_purge(self._tx(run), now)

    @staticmethod
    def _insert(db: sqlite3.Connection, conversation_id: str, items: list[str]) -> None:
        db.executemany("INSERT INTO conversation_items (conversation_id, item_id, data, size) VALUES (?,?,?,?)",
                       [(conversation_id, json.loads(e).get("id", ""), e, len(e.encode())) for e in items])

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> bool:
        """Delete a bounded batch of expired conversations and their items, at most once a PURGE_EVERY_S;
        whether it did (the caller then ``_reclaim``s, once the transaction is committed)."""
        if now < self._next_purge:
            return False
        ids = [row[0] for row in db.execute("SELECT id FROM conversations WHERE expires_at <= ? LIMIT ?",
                                            (now, PURGE_BATCH))]
        for conversation_id in ids:
            self._drop(db, conversation_id)
        self._next_purge = now if len(ids) >= PURGE_BATCH else now + PURGE_EVERY_S
        return True

    def _after_purge(self, purged: bool, now: float) -> None:
        """A bounded part of the file's free pages given back after a purge; more waiting: again soon."""
        if purged and self._reclaim() and self._next_purge > now:
            self._next_purge = now + RECLAIM_AGAIN_S

    @staticmethod
    def _drop(db: sqlite3.Connection, conversation_id: str) -> None:
        db.execute("DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
        db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    @staticmethod
    def _live(db: sqlite3.Connection, key_id: str, conversation_id: str, now: float) -> str | None:
        """The conversation's header if ``key_id``'s and not expired."""
        row = db.execute("SELECT data FROM conversations WHERE id = ? AND key_id = ? AND expires_at > ?",
                         (conversation_id, key_id, now)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _ends_with(db: sqlite3.Connection, conversation_id: str, items: list[str]) -> bool:
        tail = db.execute("SELECT data FROM conversation_items WHERE conversation_id = ? ORDER BY seq DESC LIMIT ?",
                          (conversation_id, len(items))).fetchall()
        return [row[0] for row in reversed(tail)] == items

    @staticmethod
    def _size(db: sqlite3.Connection, conversation_id: str) -> int:
        return db.execute("SELECT COALESCE(SUM(size), 0) FROM conversation_items WHERE conversation_id = ?",
                          (conversation_id,)).fetchone()[0]

    @staticmethod
    def _touch(db: sqlite3.Connection, conversation_id: str, now: float, retention: float) -> None:
        db.execute("UPDATE conversations SET expires_at = ? WHERE id = ?", (now + retention, conversation_id))

    async def get(self, key_id: str, conversation_id: str) -> Conversation | None:
        def run(db: sqlite3.Connection) -> Conversation | None:
            header = self._live(db, key_id, conversation_id, time.time())
            return None if header is None else _conversation(conversation_id, header, self._size(db, conversation_id))

        return self._read(run)

    async def items(self, key_id: str, conversation_id: str) -> list[dict[str, Any]] | None:
        found = await self.turn_items(key_id, conversation_id)
        return None if found is None else found[0]

    async def turn_items(self, key_id: str, conversation_id: str) -> tuple[list[dict[str, Any]], str | None] | None:
        def run(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], str | None] | None:
            row = db.execute("SELECT last_turn FROM conversations WHERE id = ? AND key_id = ? AND expires_at > ?",
                             (conversation_id, key_id, time.time())).fetchone()
            if row is None:
                return None
            rows = db.execute("SELECT data FROM conversation_items WHERE conversation_id = ? ORDER BY seq",
                              (conversation_id,))
            return [json.loads(item[0]) for item in rows], row[0]

        return self._read(run)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read in one (deferred) transaction: the header and the items of one moment."""
        try:
            self._db.execute("BEGIN")
            try:
                return fn(self._db)
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.label}: {e}") from e

    async def append(self, key_id: str, conversation_id: str, items: list[str], *, retention: float,
                     max_bytes: int | None, once: bool = False, fence: str | None = None,
                     last: str | None = None) -> Appended:
        # ``fence`` is not kept: a SQLite write that failed was rolled back, and never lands after a withdraw
        now = time.time()

        def run(db: sqlite3.Connection) -> Appended:
            nonlocal purged
            forgotten.check_writable(db, key_id, now)
            if self._live(db, key_id, conversation_id, now) is None:
                return Appended(found=False)
            if once and items and self._ends_with(db, conversation_id, items):
                self._name_last(db, conversation_id, last)
                return Appended(found=True, size=self._size(db, conversation_id))
            size = self._size(db, conversation_id) + size_of(items)
            if max_bytes is not None and size > max_bytes:
                return Appended(found=True, full=True, size=size)
            self._insert(db, conversation_id, items)
            self._touch(db, conversation_id, now, retention)
            self._name_last(db, conversation_id, last)
            purged = self._maybe_purge(db, now)  # a host that only continues conversations still drops expired ones
            return Appended(found=True, size=size)

        purged = False
        appended = self._tx(run)
        self._after_purge(purged, now)
        return appended

    @staticmethod
    def _name_last(db: sqlite3.Connection, conversation_id: str, last: str | None) -> None:
        if last is not None:
            db.execute("UPDATE conversations SET last_turn = ? WHERE id = ?", (last or None, conversation_id))

    async def withdraw(self, key_id: str, conversation_id: str, items: list[str], *, fence: str,
                       retention: float) -> int | None:
        now = time.time()

        def run(db: sqlite3.Connection) -> int | None:
            if self._live(db, key_id, conversation_id, now) is None:
                return None
            return sum(db.execute("DELETE FROM conversation_items WHERE seq = (SELECT seq FROM conversation_items "
                                  "WHERE conversation_id = ? AND data = ? ORDER BY seq DESC LIMIT 1)",
                                  (conversation_id, item)).rowcount for item in items)

        return self._tx(run)

    async def set_metadata(self, key_id: str, conversation_id: str, metadata: dict[str, str], *,
                           retention: float) -> bool:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            forgotten.check_writable(db, key_id, now)
            header = self._live(db, key_id, conversation_id, now)
            if header is None:
                return False
            db.execute("UPDATE conversations SET data = ?, expires_at = ? WHERE id = ?",
                       (_header(json.loads(header)["created_at"], metadata), now + retention, conversation_id))
            return True

        return self._tx(run)

    async def delete_item(self, key_id: str, conversation_id: str, item_id: str, *, retention: float) -> bool | None:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool | None:
            forgotten.check_writable(db, key_id, now)
            if self._live(db, key_id, conversation_id, now) is None:
                return None
            gone = db.execute("DELETE FROM conversation_items WHERE seq = (SELECT seq FROM conversation_items WHERE "
                              "conversation_id = ? AND item_id = ? ORDER BY seq LIMIT 1)",
                              (conversation_id, item_id)).rowcount > 0
            self._touch(db, conversation_id, now, retention)
            return gone

        return self._tx(run)

    async def delete(self, key_id: str, conversation_id: str) -> bool:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            if self._live(db, key_id, conversation_id, now) is None:
                return False
            self._drop(db, conversation_id)
            return True

        return self._tx(run)

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        def run(db: sqlite3.Connection) -> int:
            forgotten.mark_first(db, key_id, marked=marked)
            db.execute("DELETE FROM conversation_items WHERE conversation_id IN "
                       "(SELECT id FROM conversations WHERE key_id = ?)", (key_id,))
            return db.execute("DELETE FROM conversations WHERE key_id = ?", (key_id,)).rowcount

        return self._tx(run)

    async def aclose(self) -> None:
        self._close_db()


# Each script reads its key's forgotten mark (KEYS[3]) before it writes: a write of a key ``forget_key`` is deleting
# keeps nothing wherever its SCAN is (one written behind the SCAN, where it had passed, was kept).

# KEYS: the conversation's hash, its item list, its key's forgotten mark. ARGV: TTL in ms, its header, its items'
# size, its items. Returns 1, or 0 when its key was forgotten (nothing kept).
CREATE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'header', ARGV[2], 'bytes', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
if #ARGV > 3 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return 1
"""
# KEYS: as CREATE (and the turn's fence, if any). ARGV: TTL in ms, the size bound (-1: none), 1 to add nothing when
# the list already ends with the items (``once``) else 0, what becomes of the conversation's ``last`` once the items
# are there (its hash's field: "" stays, "-" goes, else this text), the items. Returns {0, size} when added (or there
# already, with ``once``), {1, 0} when there is no such conversation, {2, size} when it would be too big, {3, size}
# when the turn was withdrawn (its fence is there), {4, 0} when its key was forgotten.
APPEND = """
if redis.call('EXISTS', KEYS[3]) == 1 then return {4, 0} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {1, 0} end
local size = tonumber(redis.call('HGET', KEYS[1], 'bytes'))
if #KEYS > 3 and redis.call('EXISTS', KEYS[4]) == 1 then return {3, size} end
local n = #ARGV - 4
local function name_last()
  if ARGV[4] == '-' then redis.call('HDEL', KEYS[1], 'last')
  elseif ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'last', ARGV[4]) end
end
if ARGV[3] == '1' and n > 0 then
  local tail = redis.call('LRANGE', KEYS[2], -n, -1)
  local same = #tail == n
  for i = 1, n do
    if not same then break end
    same = tail[i] == ARGV[i + 4]
  end
  if same then
    name_last()
    return {0, size}
  end
end
for i = 5, #ARGV do size = size + #ARGV[i] end
local limit = tonumber(ARGV[2])
if limit >= 0 and size > limit then return {2, size} end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'bytes', size)
name_last()
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {0, size}
"""
# KEYS: as APPEND, with the turn's fence. ARGV: the fence's TTL in ms, the turn's items (exact stored forms). The
# fence is set first (whether or not the conversation is there: an append of the turn may yet come), unless its key
# was forgotten (its appends are refused, and a fence set then was left behind). Returns -1 (no conversation, or its
# key forgotten), else how many of the items were there (each removed, the last of its value).
WITHDRAW = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('SET', KEYS[4], '1', 'PX', ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local removed = 0
for i = 2, #ARGV do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) > 0 then
    removed = removed + 1
    redis.call('HINCRBY', KEYS[1], 'bytes', -#ARGV[i])
  end
end
return removed
"""
# KEYS as CREATE. ARGV: TTL in ms, the item's exact stored form. Returns -1 (no conversation), 0 or 1 (removed), or
# FORGOTTEN (its key forgotten).
DELETE_ITEM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('LREM', KEYS[2], 1, ARGV[2])
if n > 0 then redis.call('HINCRBY', KEYS[1], 'bytes', -#ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return n
"""
# KEYS as CREATE. ARGV: TTL in ms, the new header. Returns 0 (no conversation), 1, or FORGOTTEN (its key forgotten).
SET_HEADER = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -2 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'header', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""
FORGOTTEN = -2  # DELETE_ITEM's and SET_HEADER's answer for a forgotten key


class RedisConversationStore(RedisBacked):
    """A hash per conversation (``{ns}:conversation:{key_id}:{id}``: its header, byte size and ``last``) and a list of
    its items (the same name and ``:items``), both with the conversation's TTL; every write is one Lua script,
    atomic in Redis, which reads its key's forgotten mark and what is there before it writes."""

    LABEL = "redis conversations"  # StoreUnavailable's word for this store

    def __init__(self, link: RedisLink, *, namespace: str = "sn1") -> None:
        super().__init__(link, namespace=namespace)
        client = self.r
        self._create = client.register_script(CREATE)
        self._append = client.register_script(APPEND)
        self._withdraw = client.register_script(WITHDRAW)
        self._delete_item = client.register_script(DELETE_ITEM)
        self._set_header = client.register_script(SET_HEADER)

    def _names(self, key_id: str, conversation_id: str) -> tuple[str, str]:
        """Its hash and its list."""
        head = f"{self.ns}:conversation:{key_id}:{conversation_id}"
        return head, head + ":items"

    def _keys(self, key_id: str, conversation_id: str, fence: str | None = None) -> list[str]:
        """A write script's names: its hash and list, its key's forgotten mark, and the fence of a turn (``fence``:
        a response id, ours: no glob character)."""
        head, listed = self._names(key_id, conversation_id)
        return [head, listed, forgotten.redis_name(self.ns, key_id)] + ([] if fence is None else
                                                                        [f"{head}:fence:{fence}"])

    async def create(self, key_id: str, conversation: Conversation, items: list[str], *, retention: float) -> None:
        header = _header(conversation.created_at, conversation.metadata)
        if not await self._call(self._create(keys=self._keys(key_id, conversation.id),
                                             args=[ttl_ms(retention), header, size_of(items), *items])):
            raise KeyForgotten(key_id)

    async def get(self, key_id: str, conversation_id: str) -> Conversation | None:
        head, _ = self._names(key_id, conversation_id)
        found = await self._call(self.r.hgetall(head))
        if not found:
            return None
        return _conversation(conversation_id, found[b"header"], int(found[b"bytes"]))

    async def items(self, key_id: str, conversation_id: str) -> list[dict[str, Any]] | None:
        raw = await self._raw_items(key_id, conversation_id)
        return None if raw is None else [json.loads(e) for e in raw[0]]

    async def turn_items(self, key_id: str, conversation_id: str) -> tuple[list[dict[str, Any]], str | None] | None:
        raw = await self._raw_items(key_id, conversation_id)
        if raw is None:
            return None
        items, last = raw
        return [json.loads(e) for e in items], None if last is None else last.decode()

    async def _raw_items(self, key_id: str, conversation_id: str) -> tuple[list[bytes], bytes | None] | None:
        """The stored forms of its items and its ``last``, read with its hash in one transaction."""
        head, listed = self._names(key_id, conversation_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.exists(head)
        pipe.hget(head, "last")
        pipe.lrange(listed, 0, -1)
        exists, last, raw = await self._call(pipe.execute())
        return (raw, last) if exists else None

    async def append(self, key_id: str, conversation_id: str, items: list[str], *, retention: float,
                     max_bytes: int | None, once: bool = False, fence: str | None = None,
                     last: str | None = None) -> Appended:
        limit = -1 if max_bytes is None else max_bytes
        args = [ttl_ms(retention), limit, int(once), _last_arg(last), *items]
        status, size = await self._call(self._append(keys=self._keys(key_id, conversation_id, fence), args=args))
        if status == 4:
            raise KeyForgotten(key_id)
        return Appended(found=status != 1, full=status == 2, size=int(size), withdrawn=status == 3)

    async def withdraw(self, key_id: str, conversation_id: str, items: list[str], *, fence: str,
                       retention: float) -> int | None:
        removed = await self._call(self._withdraw(keys=self._keys(key_id, conversation_id, fence),
                                                  args=[ttl_ms(retention), *items]))
        return None if removed < 0 else int(removed)

    async def set_metadata(self, key_id: str, conversation_id: str, metadata: dict[str, str], *,
                           retention: float) -> bool:
        found = await self.get(key_id, conversation_id)
        if found is None:
            await self._refuse_forgotten(key_id)
            return False
        header = _header(found.created_at, metadata)
        done = await self._call(self._set_header(keys=self._keys(key_id, conversation_id),
                                                 args=[ttl_ms(retention), header]))
        if done == FORGOTTEN:
            raise KeyForgotten(key_id)
        return bool(done)

    async def delete_item(self, key_id: str, conversation_id: str, item_id: str, *, retention: float) -> bool | None:
        raw = await self._raw_items(key_id, conversation_id)
        if raw is None:
            await self._refuse_forgotten(key_id)
            return None
        stored = next((e for e in raw[0] if json.loads(e).get("id") == item_id), None)
        if stored is None:
            return False
        removed = await self._call(self._delete_item(keys=self._keys(key_id, conversation_id),
                                                     args=[ttl_ms(retention), stored]))
        if removed == FORGOTTEN:
            raise KeyForgotten(key_id)
        return None if removed < 0 else removed > 0

    async def _refuse_forgotten(self, key_id: str) -> None:
        """``KeyForgotten`` when ``key_id`` was deleted: a write that found nothing to change answers as its script
        would have (and as SQLite's, which reads the mark first), not "no such conversation"."""
        if await self._call(self.r.exists(forgotten.redis_name(self.ns, key_id))):
            raise KeyForgotten(key_id)

    async def delete(self, key_id: str, conversation_id: str) -> bool:
        head, listed = self._names(key_id, conversation_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(head)
        pipe.delete(listed)
        gone, _ = await self._call(pipe.execute())
        return bool(gone)

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        """A SCAN of the key's names (in batches: never a KEYS that blocks Redis), once its forgotten mark is set: a
        write of it the SCAN could miss (a conversation made, or a list written again, as it runs) is refused."""
        await forgotten.redis_mark_first(self, key_id, marked=marked)
        pattern = glob_escaped(f"{self.ns}:conversation:{key_id}:") + "*"
        return await self._call(forget_matching(self.r, pattern))


def _last_arg(last: str | None) -> str:
    """APPEND's ARGV[4] for ``append``'s ``last``: "" (stays), "-" (goes) or the text (a JSON object's)."""
    if last is None:
        return ""
    return last or "-"


def open_conversations(url: str, *, namespace: str = "sn1", links: RedisLinks | None = None) -> ConversationStore:
    return open_by_url(url, SQLiteConversationStore, RedisConversationStore, namespace=namespace, links=links)
