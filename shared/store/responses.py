"""Stored Responses API responses, so that ``previous_response_id`` works on every worker and host.

A stored response is visible to the API key that made it and to no other: each
lookup names the key, and another key's id reads as an unknown one. What is kept
is the final response object and the conversation it answered (as Responses
input items), until ``RESPONSES_RETENTION_SECONDS`` have passed: SQLite (one
host) drops expired rows on read and a bounded batch from time to time, then
gives a bounded part of the file's free pages back (``reclaim``); Redis (a fleet)
sets the key's TTL and expires it itself.

Each response is one JSON text, its part: its object, the input items it added,
and ``prev``, the response it continues, whose conversation and output come
before them (``encode``); a turn of a ``conversation`` continues its last stored
turn so, its part keeping the items added to the conversation since too. A chain
or a conversation of N turns so takes space linear in N: each record held its
whole conversation before (2026-12-06), N² / 2 in all. Reading one reads its
part and its ancestors' in one query or script (``decode``); a part without
``prev`` holds its whole conversation (a first turn, a turn of a conversation
whose earlier items changed, or a record stored before parts). Writing one makes its
ancestors live as long: each is read itself only until its own retention ends,
as before, and kept for its descendants after. A deleted response that others
continue is kept hidden for them; one none does goes at once, with the hidden
ancestors that only it continued.

Each response also names the items it added (its new input items and its
output), so that an ``item_reference`` finds the response that holds an item
(``holder``): an index from item id to response id, per key, that lives and dies
with its response.

A deleted key's responses go with it (``forget_key``), and any of its answers
still being made then (on any worker or host) is refused when it comes, for
``forgotten.FORGOTTEN_FOR_S`` (its key's forgotten mark): stored, it was
kept the usual day for no key to read.

A background response is put ``pending`` (queued) and then ``settle``d once:
by the task that answered it, or by a cancel, whichever comes first; the other
finds it settled and changes nothing. A streamed one also keeps its events
(``add_events``, ``events``), so that any worker can stream it again from where
a caller's connection dropped.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from shared.store import forgotten
from shared.store.base import RedisBacked, RedisLink, RedisLinks, StoreUnavailable, open_by_url, ttl_ms
from shared.store.sqlite_tables import RECLAIM_AGAIN_S, SQLiteTables, add_columns, expiring_table

# A response whose stored form (its object and the whole conversation before it) is larger than this is
# not stored: a conversation grows by its answers each turn, and one read must stay a small read. The
# answer itself still goes out, echoing ``store: false``.
MAX_STORED_BYTES = 1 << 20
# SQLite purges at most this many expired rows at once, at most once a PURGE_EVERY_S per process, on a write:
# never a scan of the whole table on a request's path.
PURGE_BATCH = 200
PURGE_EVERY_S = 60.0
SCAN_BATCH = 500  # names a deleted key's purge reads and deletes at once (Redis)
EMPTY = 2  # ``list_size`` of no items: ``[]``
# The longest chain of parts a read walks (a conversation within MAX_STORED_BYTES has far fewer turns): a guard, never
# a bound a caller meets.
MAX_CHAIN = 100_000
# A previous response's id as a part names it (ours are ``resp_`` and hex): JSON keeps it as it is, so a Redis
# script finds it at the part's start by a pattern.
PREV_ID = re.compile(r"[\w.:-]{1,256}")
PREV_AT_START = re.compile(r'^\{"prev":"([^"\\]*)"')


@dataclass(frozen=True)
class StoredResponse:
    id: str
    key_id: str
    response: dict[str, Any]  # the final response object, as it was sent (a background one: as it is now)
    items: list[dict[str, Any]]  # the conversation it answered, as input items (each with an id)
    until: float | None = None  # a pending one: when it should have been settled (its answer's deadline)
    prev: str | None = None  # the response it continues, whose conversation and output come before ``own``
    own: list[dict[str, Any]] = field(default_factory=list)  # the items its part keeps (the last of ``items``)
    before: int = EMPTY  # ``list_size`` of its conversation before ``own``
    # An ancestor whose part the store no longer has (evicted by Redis, say): ``items`` lack the conversation up to
    # it, so it is neither continued nor listed; its own object is intact (None: its conversation is whole).
    missing: str | None = None

    @property
    def size(self) -> int:
        """``list_size`` of its whole conversation (``items``), as its part carries it for the next turn's bound."""
        return joined(self.before, list_size(self.own))

    def again(self, response: dict[str, Any]) -> str:
        """Its part with ``response`` instead (a settle: the same conversation, the same place in its chain)."""
        return encode(response, self.own, prev=self.prev, before=self.before)


class PreviousGone(Exception):
    """A part naming a previous response that is no longer stored (deleted or expired as its answer was made):
    nothing was written; the caller writes it whole (``encode`` without ``prev``) or refuses it."""


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def list_size(items: Sequence[dict[str, Any]]) -> int:
    """The UTF-8 size of ``items`` as one JSON list in a stored form: what a conversation adds to its measure."""
    return len(_dumps(list(items)).encode())


def same_items(first: Sequence[dict[str, Any]], then: Sequence[dict[str, Any]]) -> bool:
    """Whether two lists of items are stored as the same JSON text (the same items, in the same order, each with its
    keys in the same order): a part continuing a response must read back exactly what a whole record held."""
    return len(first) == len(then) and _dumps(list(first)) == _dumps(list(then))


def joined(first: int, then: int) -> int:
    """``list_size`` of two lists one after the other, from theirs (``[a]`` and ``[b]`` make ``[a,b]``)."""
    return first + then - EMPTY + (1 if first > EMPTY and then > EMPTY else 0)


def response_text(response: dict[str, Any]) -> str:
    """A response object's JSON text as its part holds it: made once, then measured (``within_bound``) and
    written (``encode``), both of which take it (an answer's object is most of its part: it was encoded twice)."""
    return _dumps(response)


def encode(response: dict[str, Any] | str, items: list[dict[str, Any]], *, until: float | None = None,
           prev: str | None = None, before: int = EMPTY) -> str:
    """A response's part: its object (or its ``response_text``) and ``items``, the conversation it answered (with
    ``prev``: only its own input items, the rest being ``prev``'s conversation and output, whose ``list_size`` is
    ``before``). ``prev`` comes first, where a Redis script reads it without parsing the part."""
    if prev is not None and not PREV_ID.fullmatch(prev):
        raise ValueError(f"a stored response id of unexpected characters: {prev[:64]!r}")
    head = "{" if prev is None else f'{{"prev":{_dumps(prev)},"before":{_dumps(before)},'
    text = response if isinstance(response, str) else response_text(response)
    tail = "" if until is None else f',"until":{_dumps(until)}'
    return f'{head}"response":{text},"items":{_dumps(items)}{tail}}}'


def within_bound(response: dict[str, Any] | str, size: int, until: float | None = None) -> bool:
    """Whether a response whose whole conversation measures ``size`` (``list_size``) is stored: its object (or its
    ``response_text``) and that conversation, in one JSON text as it was stored before parts (2026-12-06), within
    ``MAX_STORED_BYTES``."""
    return len(encode(response, [], until=until).encode()) - EMPTY + size <= MAX_STORED_BYTES


def prev_of(data: str | bytes) -> str | None:
    """The previous response a part names, read as the Redis scripts read it (``PREV_LUA``)."""
    found = PREV_AT_START.match(data.decode() if isinstance(data, bytes) else data)
    return found.group(1) if found else None


def decode(response_id: str, key_id: str, chain: Sequence[str | bytes]) -> StoredResponse | None:
    """A response from its part then its ancestors' (nearest first), as far as the store found them: a chain
    broken (an ancestor missing: evicted, say) names the missing one (``missing``), whose absence its readers
    tell, rather than an unknown response (it is there) or a conversation cut short. A part without ``prev`` holds
    its whole conversation (a first turn, or a record stored before parts)."""
    parts = [json.loads(raw) for raw in chain]
    if not parts:
        return None
    missing = parts[-1].get("prev")
    if missing is not None:
        logger.warning("stored response {} of key id={}: its conversation is incomplete (response {} is missing)",
                       response_id, key_id, missing)
    items: list[dict[str, Any]] = []
    for part in reversed(parts[1:]):
        items += part["items"] + list(part["response"].get("output") or [])
    head = parts[0]
    return StoredResponse(response_id, key_id, head["response"], items + head["items"], head.get("until"),
                          prev=head.get("prev"), own=head["items"], before=head.get("before", EMPTY), missing=missing)


class ResponseStore(Protocol):
    async def put(self, key_id: str, response_id: str, data: str, *, retention: float,
                  item_ids: Sequence[str] = (), pending: bool = False) -> bool:
        """Keep ``data`` (``encode``'s) as ``response_id`` of ``key_id`` for ``retention`` seconds, and the
        responses it continues as long; ``item_ids``: the items it added, found by ``holder`` from now on (a later
        response adding the same id takes it); ``pending``: a background response, to be ``settle``d. False:
        nothing was kept, the key was deleted (``forget_key``). ``PreviousGone``: nothing was kept, the response
        it continues is no longer stored."""
        ...

    async def settle(self, key_id: str, response_id: str, data: str, *, retention: float,
                     item_ids: Sequence[str] = ()) -> bool:
        """Replace a pending response with ``data`` (as ``put``), once: False (nothing changed) when it was
        settled already, or is gone."""
        ...

    async def holder(self, key_id: str, item_id: str) -> StoredResponse | None:
        """The stored response of ``key_id`` that added the item ``item_id`` (None as ``get``'s)."""
        ...

    async def is_pending(self, key_id: str, response_id: str) -> bool:
        """Whether the response is still to be settled (a cheap read: its task asks it every second)."""
        ...

    async def add_events(self, key_id: str, response_id: str, events: Sequence[tuple[int, str]], *,
                         retention: float) -> None:
        """Keep a streamed background response's next events: (sequence number, SSE frame) pairs, in order; the
        numbers may skip (the caller leaves some out). Only while the response is stored: one deleted as its
        answer is made (on another worker or host) keeps none of it."""
        ...

    async def events(self, key_id: str, response_id: str, *, after: int,
                     limit: int | None = None) -> list[tuple[int, str]]:
        """Its kept events numbered past ``after``, in order, as far as they are kept now (``limit``: at most)."""
        ...

    async def last_event(self, key_id: str, response_id: str) -> tuple[int, str] | None:
        """Its kept event numbered highest (None: none kept)."""
        ...

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        """The response if ``key_id`` made it and it has not expired; else None (as for an unknown id)."""
        ...

    async def delete(self, key_id: str, response_id: str) -> bool:
        """Delete ``key_id``'s response (kept hidden while stored responses continue it); whether there was one."""
        ...

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        """Delete every response ``key_id`` made (its key was deleted: its conversations go with it, not at
        their expiry), and refuse any it would make for ``FORGOTTEN_FOR_S`` (``put`` and ``settle`` keep nothing
        of an answer that comes after); how many there were (not counting deleted ones kept hidden for the
        responses continuing them, which go too). ``marked``: another store's ``forget_key`` set the key's
        forgotten mark already (``forgotten.py``)."""
        ...

    async def aclose(self) -> None: ...


# By id (each lookup also names the key, checked on the row); the indexes serve the bounded purge and
# a deleted key's ``forget_key``. An item's row names the response that holds it, and goes with it.
SCHEMA = expiring_table("stored_responses", index="stored_responses_expiry", on="expires_at") + """
CREATE INDEX IF NOT EXISTS stored_responses_key ON stored_responses (key_id);
CREATE TABLE IF NOT EXISTS stored_response_items (
    key_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    PRIMARY KEY (key_id, item_id)
);
CREATE INDEX IF NOT EXISTS stored_response_items_response ON stored_response_items (response_id);
CREATE TABLE IF NOT EXISTS pending_responses (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS response_events (
    response_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (response_id, seq)
);
CREATE INDEX IF NOT EXISTS response_events_key ON response_events (key_id);
""" + forgotten.SCHEMA


# Columns added with parts (2026-12-06), to a table made before them too: the response a part continues (its
# ``prev``), whether it was deleted while responses continuing it were stored (kept hidden for them), and when its own
# retention ends once a later turn made it live longer (``expires_at``: NULL, the same).
PART_COLUMNS = {"prev": "TEXT", "hidden": "INTEGER NOT NULL DEFAULT 0", "visible_until": "REAL"}
PART_INDEX = "CREATE INDEX IF NOT EXISTS stored_responses_prev ON stored_responses (prev)"
# Where a chain starts: a response by id, or the one holding an item; it is read with its ancestors in one query.
VISIBLE_UNTIL = "COALESCE(visible_until, expires_at)"
BY_ID = (f"SELECT 0, id, data, prev, expires_at, {VISIBLE_UNTIL} FROM stored_responses "
         "WHERE id = ? AND key_id = ? AND hidden = 0")
BY_ITEM = ("SELECT 0, r.id, r.data, r.prev, r.expires_at, COALESCE(r.visible_until, r.expires_at) FROM "
           "stored_response_items i JOIN stored_responses r ON r.id = i.response_id AND r.key_id = i.key_id "
           "WHERE i.key_id = ? AND i.item_id = ? AND r.hidden = 0")


def chain_query(start: str) -> str:
    """A response's part (``start``, which takes two arguments) then its ancestors' (by ``prev``, of the key given
    third), nearest first: (id, data, expires_at, visible until) rows."""
    return f"""WITH RECURSIVE chain(n, id, data, prev, expires_at, visible) AS ({start}
        UNION ALL SELECT chain.n + 1, r.id, r.data, r.prev, r.expires_at, 0 FROM chain JOIN stored_responses r
        ON r.id = chain.prev AND r.key_id = ? WHERE chain.n < {MAX_CHAIN})
    SELECT id, data, expires_at, visible FROM chain ORDER BY n"""


# The ancestors of a response (the first argument; of the key given second and fourth) made to live until the third,
# each still readable itself until its own retention ends (``visible_until``).
EXTEND_ANCESTORS = f"""WITH RECURSIVE up(id, n) AS (SELECT ?, 0
        UNION ALL SELECT r.prev, up.n + 1 FROM up JOIN stored_responses r ON r.id = up.id AND r.key_id = ?
        WHERE r.prev IS NOT NULL AND up.n < {MAX_CHAIN})
    UPDATE stored_responses SET visible_until = {VISIBLE_UNTIL}, expires_at = ?3
    WHERE key_id = ?4 AND expires_at < ?3 AND id IN (SELECT id FROM up)"""


def _add_part_columns(db: sqlite3.Connection) -> None:
    """A responses table made by an earlier release gains its parts' columns and their index."""
    add_columns(db, "stored_responses", PART_COLUMNS)
    db.execute(PART_INDEX)


class SQLiteResponseStore(SQLiteTables):
    """A row per response: its part (``data``), its ``prev`` and its expiry, which its ancestors' rows are extended
    to when it is written (an ancestor lives as long as its longest-living descendant, and the bounded purge by
    expiry never leaves a live chain broken; read itself, it is gone after its own retention, as before)."""

    label = "sqlite responses"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA, migrate=_add_part_columns)
        self._next_purge = 0.0  # per instance (per worker): when this one next deletes expired rows

    async def put(self, key_id: str, response_id: str, data: str, *, retention: float,
                  item_ids: Sequence[str] = (), pending: bool = False) -> bool:
        now = time.time()
        purge = now >= self._next_purge

        def run(db: sqlite3.Connection) -> tuple[bool, int]:
            kept = not forgotten.is_forgotten(db, key_id, now)
            if kept:
                self._write(db, key_id, response_id, data, now, now + retention, item_ids, continued=True)
            if kept and pending:
                db.execute("INSERT OR REPLACE INTO pending_responses (id, key_id) VALUES (?,?)", (response_id, key_id))
            return kept, self._purge(db, now) if purge else 0

        kept, purged = self._tx(run)
        if purge:  # a full batch: more may be waiting, so the next write purges again (and reclaims soon)
            more_free = self._reclaim()  # after the commit: what the purge freed is given back too
            self._next_purge = now if purged >= PURGE_BATCH else now + (RECLAIM_AGAIN_S if more_free else
                                                                         PURGE_EVERY_S)
        return kept

    @staticmethod
    def _write(db: sqlite3.Connection, key_id: str, response_id: str, data: str, now: float, expires_at: float,
               item_ids: Sequence[str], *, continued: bool = False) -> None:
        """Its row, its items' rows, and its ancestors living as long; ``continued``: a new part, whose previous
        response must still be there (``PreviousGone``: nothing is written)."""
        prev = prev_of(data)
        if prev is not None:
            if continued and not db.execute("SELECT 1 FROM stored_responses WHERE id = ? AND key_id = ? AND "
                                            "expires_at > ?", (prev, key_id, now)).fetchone():
                raise PreviousGone(prev)
            db.execute(EXTEND_ANCESTORS, (prev, key_id, expires_at, key_id))
        db.execute("INSERT OR REPLACE INTO stored_responses (id, key_id, data, expires_at, prev, hidden, visible_until) "
                   "VALUES (?,?,?,?,?,0,NULL)", (response_id, key_id, data, expires_at, prev))
        db.executemany("INSERT OR REPLACE INTO stored_response_items (key_id, item_id, response_id) "
                       "VALUES (?,?,?)", [(key_id, item_id, response_id) for item_id in item_ids])

    async def settle(self, key_id: str, response_id: str, data: str, *, retention: float,
                     item_ids: Sequence[str] = ()) -> bool:
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM pending_responses WHERE id = ? AND key_id = ?", (response_id, key_id)).rowcount:
                self._write(db, key_id, response_id, data, now, now + retention, item_ids)
                return True
            return False

        return self._tx(run)

    @staticmethod
    def _purge(db: sqlite3.Connection, now: float) -> int:
        """Delete up to ``PURGE_BATCH`` expired responses (by the expiry index) and their items; how many went.
        (Forgotten marks past their time go in the session sweep: ``forgotten.purge``.)"""
        ids = [(row[0],) for row in db.execute("SELECT id FROM stored_responses WHERE expires_at <= ? LIMIT ?",
                                               (now, PURGE_BATCH))]
        db.executemany("DELETE FROM stored_response_items WHERE response_id = ?", ids)
        db.executemany("DELETE FROM response_events WHERE response_id = ?", ids)
        db.executemany("DELETE FROM pending_responses WHERE id = ?", ids)
        return db.executemany("DELETE FROM stored_responses WHERE id = ?", ids).rowcount

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        return self._alive(response_id, key_id, self._query(chain_query(BY_ID), (response_id, key_id, key_id)))

    async def is_pending(self, key_id: str, response_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM pending_responses WHERE id = ? AND key_id = ?", (response_id, key_id)))

    async def add_events(self, key_id: str, response_id: str, events: Sequence[tuple[int, str]], *,
                         retention: float) -> None:
        # Events of a response no longer stored were kept for good: the purges find events by their response.
        self._tx(lambda db: db.executemany(
            "INSERT OR REPLACE INTO response_events (response_id, key_id, seq, data) SELECT ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM stored_responses WHERE id = ? AND key_id = ? AND hidden = 0)",
            [(response_id, key_id, seq, e, response_id, key_id) for seq, e in events]))

    async def events(self, key_id: str, response_id: str, *, after: int,
                     limit: int | None = None) -> list[tuple[int, str]]:
        rows = self._query("SELECT seq, data FROM response_events WHERE response_id = ? AND key_id = ? AND seq > ? "
                           "ORDER BY seq LIMIT ?", (response_id, key_id, after, -1 if limit is None else limit))
        return [(row[0], row[1]) for row in rows]

    async def last_event(self, key_id: str, response_id: str) -> tuple[int, str] | None:
        rows = self._query("SELECT seq, data FROM response_events WHERE response_id = ? AND key_id = ? "
                           "ORDER BY seq DESC LIMIT 1", (response_id, key_id))
        return (rows[0][0], rows[0][1]) if rows else None

    async def holder(self, key_id: str, item_id: str) -> StoredResponse | None:
        rows = self._query(chain_query(BY_ITEM), (key_id, item_id, key_id))
        return self._alive(rows[0][0], key_id, rows) if rows else None

    def _alive(self, response_id: str, key_id: str,
               chain: list[tuple[str, str, float, float]]) -> StoredResponse | None:
        """A chain read back (``chain_query``'s rows): the response, or None if its retention has ended (deleted
        now, as Redis would have it, unless later turns keep it for their conversation) or it is not there."""
        if not chain:
            return None
        _, _, expires_at, visible_until = chain[0]
        now = time.time()
        if visible_until > now:
            return decode(response_id, key_id, [row[1] for row in chain])
        if expires_at <= now:
            self._tx(lambda db: self._drop(db, "id = ? AND expires_at <= ?", (response_id, expires_at)))
        return None

    @staticmethod
    def _drop(db: sqlite3.Connection, where: str, args: tuple[Any, ...], *, hide: bool = False) -> int:
        """Delete the responses ``where`` selects, their items' rows and pending marks; how many responses went.
        ``hide``: their parts are kept, hidden (responses continuing them are stored)."""
        selected = f"SELECT id FROM stored_responses WHERE {where}"
        db.execute(f"DELETE FROM stored_response_items WHERE response_id IN ({selected})", args)
        db.execute(f"DELETE FROM pending_responses WHERE id IN ({selected})", args)
        db.execute(f"DELETE FROM response_events WHERE response_id IN ({selected})", args)
        if hide:
            return db.execute(f"UPDATE stored_responses SET hidden = 1 WHERE {where}", args).rowcount
        return db.execute(f"DELETE FROM stored_responses WHERE {where}", args).rowcount

    async def delete(self, key_id: str, response_id: str) -> bool:
        """Gone for its key at once; its part stays hidden while responses continuing it are stored (their
        conversation), and an ancestor kept only for it (hidden, or past its own retention) goes with it."""
        now = time.time()

        def run(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT prev FROM stored_responses WHERE id = ? AND key_id = ? AND hidden = 0 AND "
                             f"{VISIBLE_UNTIL} > ?", (response_id, key_id, now)).fetchone()
            if row is None:
                return False
            hide = self._continued(db, key_id, response_id, now)
            self._drop(db, "id = ?", (response_id,), hide=hide)
            prev = None if hide else row[0]
            while prev is not None and not self._continued(db, key_id, prev, now):
                up = db.execute("SELECT prev FROM stored_responses WHERE id = ? AND key_id = ? AND (hidden = 1 OR "
                                f"{VISIBLE_UNTIL} <= ?)", (prev, key_id, now)).fetchone()
                if up is None:
                    break
                self._drop(db, "id = ?", (prev,))
                prev = up[0]
            return True

        return self._tx(run)

    @staticmethod
    def _continued(db: sqlite3.Connection, key_id: str, response_id: str, now: float) -> bool:
        """Whether a stored response (hidden or not) continues ``response_id``: an expired one's row, not yet
        purged, does not (it kept a deleted response's part stored until the purge)."""
        return db.execute("SELECT 1 FROM stored_responses WHERE prev = ? AND key_id = ? AND expires_at > ? LIMIT 1",
                          (response_id, key_id, now)).fetchone() is not None

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        def run(db: sqlite3.Connection) -> int:
            forgotten.mark_first(db, key_id, marked=marked)
            db.execute("DELETE FROM stored_response_items WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM pending_responses WHERE key_id = ?", (key_id,))
            db.execute("DELETE FROM response_events WHERE key_id = ?", (key_id,))
            # its count leaves out the deleted responses kept hidden for the ones continuing them (they go too)
            gone = db.execute("DELETE FROM stored_responses WHERE key_id = ? RETURNING hidden", (key_id,)).fetchall()
            return sum(not hidden for (hidden,) in gone)

        return self._tx(run)

    async def aclose(self) -> None:
        self._close_db()


# What a response's name holds once a later turn made its part live longer than its own retention: its part moved to
# its hidden name, and this, until its own retention ends (it reads as before until then).
MOVED = "moved"
# The Lua every part script shares: ARGV[1], ARGV[2], ARGV[3] are the key's names' prefixes for a response's part,
# its hidden part (deleted, or past its own retention: kept for the responses continuing it) and the set of the
# responses continuing it (their ids); ``prev_of`` reads the ``prev`` a part starts with (``PREV_AT_START``).
# ``continued`` asks whether one of those is still stored (hidden or not), dropping those expired since: counted
# (a count was kept until 2026-12-07), an expired one kept a deleted response's part stored, hidden, until the
# others would have expired. A count an earlier release wrote is kept as a count (``add_kid``, ``drop_kid``) until it
# expires with them.
PARTS_LUA = f"""
local VISIBLE, HIDDEN, KIDS = ARGV[1], ARGV[2], ARGV[3]
local function prev_of(v) return string.match(v, '^{{"prev":"([^"\\\\\\\\]*)"') end
local function part(id)
  local name = VISIBLE .. id
  local v = redis.call('GET', name)
  if not v or v == '{MOVED}' then name = HIDDEN .. id; v = redis.call('GET', name) end
  if not v then return nil, nil end
  return name, v
end
local function outlive(name, ttl)
  local left = redis.call('PTTL', name)
  if left == -1 or (left >= 0 and left < ttl) then redis.call('PEXPIRE', name, ttl) end
end
local function live(id) return redis.call('EXISTS', VISIBLE .. id, HIDDEN .. id) > 0 end
local function kids_kind(id) return redis.call('TYPE', KIDS .. id)['ok'] end
local function continued(id)
  local kind = kids_kind(id)
  if kind == 'string' then return tonumber(redis.call('GET', KIDS .. id)) > 0 end
  if kind ~= 'set' then return false end
  for _, kid in ipairs(redis.call('SMEMBERS', KIDS .. id)) do
    if live(kid) then return true end
    redis.call('SREM', KIDS .. id, kid)
  end
  return false
end
local function add_kid(id, kid)
  if kids_kind(id) == 'string' then redis.call('INCR', KIDS .. id) else redis.call('SADD', KIDS .. id, kid) end
end
local function drop_kid(id, kid)
  if kids_kind(id) == 'string' then
    if redis.call('DECR', KIDS .. id) > 0 then return true end
  else
    redis.call('SREM', KIDS .. id, kid)
    if continued(id) then return true end
  end
  redis.call('DEL', KIDS .. id)
  return false
end
local function extend_up(id, ttl)
  for _ = 1, {MAX_CHAIN} do
    if not id then return end
    local name, v = part(id)
    if not name then return end
    local left = redis.call('PTTL', name)
    if name == VISIBLE .. id and left >= 0 and left < ttl then
      redis.call('RENAME', name, HIDDEN .. id)
      redis.call('SET', name, '{MOVED}', 'PX', left)
      name = HIDDEN .. id
    end
    outlive(name, ttl)
    outlive(KIDS .. id, ttl)
    id = prev_of(v)
  end
end
"""


# Keep a response, unless its key was forgotten (0) or the response it continues is gone (2): KEYS[1] the key's
# forgotten mark, KEYS[2] the response, KEYS[3] its pending mark, KEYS[4..] its items' names; ARGV[4] the data, ARGV[5]
# the TTL (ms), ARGV[6] the response id, ARGV[7] "1" for a pending one, ARGV[8] its prev ("" for none), which it is
# named a continuation of (once) and whose ancestors live as long.
PUT = PARTS_LUA + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local prev, ttl = ARGV[8], tonumber(ARGV[5])
if prev ~= '' and not part(prev) then return 2 end
local new = redis.call('EXISTS', KEYS[2]) == 0
redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
if ARGV[7] == '1' then redis.call('SET', KEYS[3], 1, 'PX', ttl) end
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[6], 'PX', ttl) end
if prev ~= '' then
  if new then add_kid(prev, ARGV[6]) end
  extend_up(prev, ttl)
end
return 1
"""


# Settle a pending response, once: KEYS[1] its pending mark, KEYS[2] the response, KEYS[3] its key's forgotten mark
# (a settle between ``forget_key``'s mark and its SCANs keeps nothing), KEYS[4..] its items' names; ARGV[4] the data,
# ARGV[5] the TTL (ms), ARGV[6] the response id, ARGV[7] its prev ("" for none), whose ancestors live as long.
SETTLE = PARTS_LUA + """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[6], 'PX', ttl) end
if ARGV[7] ~= '' then extend_up(ARGV[7], ttl) end
return 1
"""


# A response's part then its ancestors' (nearest first), after its id: KEYS[1] the name of an item it holds, which
# names it (ARGV[4] empty), or else its id is ARGV[4]. Empty: not there.
CHAIN = PARTS_LUA + f"""
local id = ARGV[4]
if id == '' then
  id = redis.call('GET', KEYS[1])
  if not id then return {{}} end
end
local v = redis.call('GET', VISIBLE .. id)  -- readable itself: its part, or the mark of its part moved aside
if v == '{MOVED}' then v = redis.call('GET', HIDDEN .. id) end
if not v then return {{}} end
local out = {{id, v}}
local prev = prev_of(v)
for _ = 1, {MAX_CHAIN} do
  if not prev then break end
  local _, p = part(prev)
  if not p then break end
  out[#out + 1] = p
  prev = prev_of(p)
end
return out
"""


# Delete a response (1; 0: not there): KEYS[1] its name, KEYS[2] its pending mark, KEYS[3] its events; ARGV[4] its id.
# A response others continue is hidden (its part renamed, its TTL kept); one none does goes, and so do its hidden
# ancestors that only it continued.
DELETE = PARTS_LUA + f"""
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local moved = v == '{MOVED}'
if moved then v = redis.call('GET', HIDDEN .. ARGV[4]) or '' end
redis.call('DEL', KEYS[2], KEYS[3])
if continued(ARGV[4]) then
  if moved then redis.call('DEL', KEYS[1]) else redis.call('RENAME', KEYS[1], HIDDEN .. ARGV[4]) end
  return 1
end
redis.call('DEL', KEYS[1], HIDDEN .. ARGV[4], KIDS .. ARGV[4])
local id, prev = ARGV[4], prev_of(v)
for _ = 1, {MAX_CHAIN} do
  if not prev or redis.call('EXISTS', KIDS .. prev) == 0 or drop_kid(prev, id) then break end
  local hidden = redis.call('GET', HIDDEN .. prev)
  if not hidden or redis.call('EXISTS', VISIBLE .. prev) == 1 then break end
  redis.call('DEL', HIDDEN .. prev)
  id, prev = prev, prev_of(hidden)
end
return 1
"""


# Keep a streamed response's events while the response is stored (one deleted meanwhile keeps none, nor one whose key
# is being forgotten): KEYS[1] the response, KEYS[2] its events, KEYS[3] its key's forgotten mark; ARGV[1] the TTL
# (ms), then sequence number and member pairs.
ADD_EVENTS = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
for i = 2, #ARGV, 2 do redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""


class RedisResponseStore(RedisBacked):
    """One string per response, its part, named by its key and id (``{ns}:response:{key_id}:{id}``), with Redis's
    TTL: another key's id is simply not there, and Redis expires what is old by its own clock. A response that
    others continue names them (a set, ``{ns}:response_kids:{key_id}:{id}``) and lives as long as they do: each write
    walks its ancestors (in its script) and extends their TTLs. Deleted, it is renamed hidden
    (``{ns}:response_hidden:{key_id}:{id}``) while others continue it. Each item it added is a string naming it
    (``{ns}:response_item:{key_id}:{item_id}``) with the same TTL; one whose response was deleted before it
    expired finds nothing. A pending (background) response has a mark beside it
    (``{ns}:response_pending:{key_id}:{id}``), which ``settle`` takes in one script with its write; a streamed
    one's events are a sorted set (``{ns}:response_events:{key_id}:{id}``) scored by sequence number."""

    LABEL = "redis responses"  # StoreUnavailable's word for this store

    def __init__(self, link: RedisLink, *, namespace: str = "sn1") -> None:
        super().__init__(link, namespace=namespace)
        client = self.r
        self._put = client.register_script(PUT)
        self._settle = client.register_script(SETTLE)
        self._chain = client.register_script(CHAIN)
        self._delete = client.register_script(DELETE)
        self._add_events = client.register_script(ADD_EVENTS)

    def _key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response:{key_id}:{response_id}"

    def _hidden_key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response_hidden:{key_id}:{response_id}"

    def _kids_key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response_kids:{key_id}:{response_id}"

    def _item_key(self, key_id: str, item_id: str) -> str:
        return f"{self.ns}:response_item:{key_id}:{item_id}"

    def _pending_key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response_pending:{key_id}:{response_id}"

    def _events_key(self, key_id: str, response_id: str) -> str:
        return f"{self.ns}:response_events:{key_id}:{response_id}"

    def _forgotten_key(self, key_id: str) -> str:
        return forgotten.redis_name(self.ns, key_id)

    def _prefixes(self, key_id: str) -> list[str]:
        """``PARTS_LUA``'s first three arguments."""
        return [self._key(key_id, ""), self._hidden_key(key_id, ""), self._kids_key(key_id, "")]

    async def put(self, key_id: str, response_id: str, data: str, *, retention: float,
                  item_ids: Sequence[str] = (), pending: bool = False) -> bool:
        """One script: the response and its items' names together, or none (its key forgotten, or the response it
        continues gone: ``PreviousGone``)."""
        names = [self._forgotten_key(key_id), self._key(key_id, response_id), self._pending_key(key_id, response_id),
                 *(self._item_key(key_id, item_id) for item_id in item_ids)]
        prev = prev_of(data) or ""
        args = [*self._prefixes(key_id), data, ttl_ms(retention), response_id, "1" if pending else "0", prev]
        done = await self._call(self._put(keys=names, args=args))
        if done == 2:
            raise PreviousGone(prev)
        return bool(done)

    async def settle(self, key_id: str, response_id: str, data: str, *, retention: float,
                     item_ids: Sequence[str] = ()) -> bool:
        names = [self._pending_key(key_id, response_id), self._key(key_id, response_id), self._forgotten_key(key_id),
                 *(self._item_key(key_id, item_id) for item_id in item_ids)]
        args = [*self._prefixes(key_id), data, ttl_ms(retention), response_id, prev_of(data) or ""]
        return bool(await self._call(self._settle(keys=names, args=args)))

    async def get(self, key_id: str, response_id: str) -> StoredResponse | None:
        return await self._read(key_id, self._key(key_id, response_id), response_id)

    async def _read(self, key_id: str, name: str, response_id: str | None = None) -> StoredResponse | None:
        """A response and its ancestors' parts in one script, from its name or (no ``response_id``) an item's."""
        got = await self._call(self._chain(keys=[name], args=[*self._prefixes(key_id), response_id or ""]))
        if not got:
            return None
        found_id = got[0].decode() if isinstance(got[0], bytes) else got[0]
        return decode(response_id or found_id, key_id, got[1:])

    async def is_pending(self, key_id: str, response_id: str) -> bool:
        return bool(await self._call(self.r.exists(self._pending_key(key_id, response_id))))

    async def add_events(self, key_id: str, response_id: str, events: Sequence[tuple[int, str]], *,
                         retention: float) -> None:
        """A sorted set scored by sequence number; each member is ``{seq}:{frame}`` (unique, whatever the frame)."""
        pairs = [part for seq, e in events for part in (seq, f"{seq}:{e}")]
        names = [self._key(key_id, response_id), self._events_key(key_id, response_id), self._forgotten_key(key_id)]
        await self._call(self._add_events(keys=names, args=[ttl_ms(retention), *pairs]))

    async def events(self, key_id: str, response_id: str, *, after: int,
                     limit: int | None = None) -> list[tuple[int, str]]:
        name = self._events_key(key_id, response_id)
        try:
            got = await self._call(self.r.zrangebyscore(name, f"({after}", "+inf", start=0,
                                                        num=-1 if limit is None else limit))
        except StoreUnavailable as e:
            if not _wrong_type(e):
                raise
            return await self._listed_events(name, after, -1 if limit is None else after + limit)
        return [_event(e) for e in got]

    async def last_event(self, key_id: str, response_id: str) -> tuple[int, str] | None:
        name = self._events_key(key_id, response_id)
        try:
            got = await self._call(self.r.zrange(name, -1, -1))
        except StoreUnavailable as e:
            if not _wrong_type(e):
                raise
            listed = await self._call(self.r.llen(name))
            return (await self._listed_events(name, listed - 2, listed - 1) or [None])[-1]
        return _event(got[0]) if got else None

    async def _listed_events(self, name: str, after: int, last: int) -> list[tuple[int, str]]:
        """The events of a response streamed before 2026-12-06, kept then as a list (index = sequence number):
        read so until they expire (a day), instead of every resume answering 503 after an upgrade."""
        got = await self._call(self.r.lrange(name, after + 1, last))
        return [(seq, e.decode() if isinstance(e, bytes) else e) for seq, e in enumerate(got, after + 1)]

    async def holder(self, key_id: str, item_id: str) -> StoredResponse | None:
        return await self._read(key_id, self._item_key(key_id, item_id))

    async def delete(self, key_id: str, response_id: str) -> bool:
        """The response (kept hidden while others continue it), its pending mark (a background task settling it
        later must find it gone) and its events, in one script."""
        names = [self._key(key_id, response_id), self._pending_key(key_id, response_id),
                 self._events_key(key_id, response_id)]
        return bool(await self._call(self._delete(keys=names, args=[*self._prefixes(key_id), response_id])))

    async def forget_key(self, key_id: str, *, marked: bool = False) -> int:
        """A SCAN of the key's names (an admin's rare call, in batches: never a KEYS that blocks Redis), once its
        forgotten mark is set: a write of it the SCAN could miss (one made as it runs) is refused."""
        await forgotten.redis_mark_first(self, key_id, marked=marked)
        for names in (self._item_key, self._pending_key, self._events_key, self._kids_key, self._hidden_key):
            await self._call(forget_matching(self.r, glob_escaped(names(key_id, "")) + "*"))
        return await self._call(forget_matching(self.r, glob_escaped(self._key(key_id, "")) + "*"))


def _wrong_type(e: StoreUnavailable) -> bool:
    """Whether Redis refused a command for the type of value under its name (WRONGTYPE)."""
    return "WRONGTYPE" in str(e)


def _event(member: bytes | str) -> tuple[int, str]:
    """A stored event, from its sorted set's member (``{seq}:{frame}``)."""
    seq, _, frame = (member.decode() if isinstance(member, bytes) else member).partition(":")
    return int(seq), frame


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


def open_responses(url: str, *, namespace: str = "sn1", links: RedisLinks | None = None) -> ResponseStore:
    return open_by_url(url, SQLiteResponseStore, RedisResponseStore, namespace=namespace, links=links)
