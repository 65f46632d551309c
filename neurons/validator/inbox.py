"""The validator's durable inbox: organic payloads acknowledged and not scored yet, and the ones seen.

The API's outbox deletes a payload once ``/scoring`` answers 202, so from then on the validator holds the
only copy. Held in memory alone, a restart or a crash lost what the scoring queue still had (up to
``SCORING_QUEUE_SIZE`` payloads while an outage's backlog drained), and the seen-list with it: a payload
sent again after a restart (its 202 lost just before) was scored twice. Here each accepted payload's job
is committed to a SQLite file (WAL, ``synchronous=FULL``: on the disk before the 202 goes out) in one
transaction per POST, in a thread (its fsync must not stall the event loop, which times miners' chunks),
with the identities the POST adds to the seen-list; a job's row goes once it is
scored, or dropped for a reason that is logged. At start the unscored jobs go back into the queue (within
its bounds: what does not fit waits on disk, loaded as room frees) and the seen-list is read back.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from neurons.validator.scoring import ScoringJob
from neurons.validator.scoring_queue import ScoringQueue
from shared.jsonutil import dumps, loads
from shared.settings import SettingsError
from shared.store.base import StoreUnavailable
from shared.store.outage import OutageLog
from shared.store.sqlite_tables import SQLiteTables, open_db, why_not_opened

SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS probe (data BLOB NOT NULL);
"""
PAGE = 64  # jobs read from the file at once when loading: a backlog of 10,000 long answers is GBs
Identity = tuple[Any, ...]


def encode_job(job: ScoringJob) -> str:
    """An organic job as stored: its one body once (every uid was sent the same, but for a seed of its own in a
    mixture's first stage: ``seeds``), the rest as it is."""
    body = next(iter(job.bodies.values()))
    seeds = {u: b.get("seed") for u, b in job.bodies.items() if b.get("seed") != body.get("seed")}
    return dumps({"task": job.task, "body": body, "seeds": seeds, "hotkeys": job.hotkeys, "chunks": job.chunks,
                  "timings": job.timings, "errors": job.errors, "deadline_s": job.deadline_s,
                  "created_at": job.created_at, "size": job.size, "request_id": job.request_id})


def decode_job(row_id: int, raw: str) -> ScoringJob:
    """The job ``encode_job`` stored (``ValueError``, ``KeyError``, ``TypeError`` for a damaged row)."""
    data = loads(raw)
    hotkeys = {int(u): str(hk) for u, hk in data["hotkeys"].items()}
    body, seeds = data["body"], {int(u): s for u, s in (data.get("seeds") or {}).items()}  # none: an older row
    return ScoringJob(source="organic", task=str(data["task"]),
                      bodies={u: {**body, "seed": seeds[u]} if u in seeds else body for u in hotkeys},
                      hotkeys=hotkeys, chunks={int(u): list(c) for u, c in data["chunks"].items()},
                      timings={int(u): list(t) for u, t in data["timings"].items()},
                      errors={int(u): str(e) for u, e in data["errors"].items()},
                      deadline_s=float(data["deadline_s"]), created_at=float(data["created_at"]),
                      size=int(data["size"]), inbox_id=row_id,
                      request_id=rid if isinstance(rid := data.get("request_id"), str) else None)  # absent: older row


def encode_identity(identity: Identity) -> str:
    return dumps(list(identity))


def decode_identity(raw: str) -> Identity:
    """``OrganicPayload.identity()`` as it was: (request_id, kind, created_at, uids as a tuple)."""
    request_id, kind, created_at, uids = loads(raw)
    return request_id, kind, created_at, tuple(uids)


class ScoringInbox(SQLiteTables):
    """Accepted organic jobs until they are scored, and the seen-list, in one SQLite file.

    Two connections. ``_durable`` commits what ``/scoring`` accepts, with ``synchronous=FULL`` (the API
    forgets a payload on the 202, so it must survive a power cut too: an fsync per POST, 8 to 20 ms on a
    cloud disk), and only in ``accept``'s thread, one POST at a time. ``_db`` (``NORMAL``) does the rest on
    the event loop: settling (a delete lost to a power cut only scores one job again, and an fsync per
    scored job would pace scoring at the disk's), loading, reclaiming."""

    label = "scoring inbox"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA, synchronous="NORMAL")
        self._durable = open_db(self.path, synchronous="FULL")
        # Held by a POST from its checks (seen before? room?) to its jobs queued: the write between them runs
        # in a thread, and another POST deciding meanwhile could take the same room, or count the same payload.
        self.accepting = asyncio.Lock()
        self.refused = OutageLog("scoring inbox: payloads not stored, /scoring answers 503")
        self.unsettled = OutageLog("scoring inbox: scored jobs not removed (each is scored again after a restart)")
        self._refused_bytes = 0  # the size of the last write refused (what ``probe`` tries again)
        self._queue: ScoringQueue | None = None  # where ``restore`` put the jobs, and later ones waiting go
        self._next_id = 0  # the jobs waiting on disk for room in the queue: ids from this one ...
        self._last_id = -1  # ... to this one (none when it is below ``_next_id``)

    # --- /scoring --------------------------------------------------------------------------------
    async def accept(self, jobs: Sequence[ScoringJob], seen: Iterable[Identity],
                     forgotten: Iterable[Identity]) -> None:
        """Store a POST's jobs (each gets its ``inbox_id``) and its identities new to the seen-list, less those
        it pushes out, in one transaction; ``StoreUnavailable`` when the file refuses it (nothing stored)."""
        rows = [(encode_job(job), job.created_at) for job in jobs]
        added = [(encode_identity(i),) for i in seen]
        dropped = [(encode_identity(i),) for i in forgotten]
        if not rows and not added:
            return  # all sent before: nothing new to keep (and no fsync)

        def run(db: sqlite3.Connection) -> list[int]:
            ids = [db.execute("INSERT INTO inbox (job, created_at) VALUES (?, ?)", row).lastrowid for row in rows]
            db.executemany("INSERT OR IGNORE INTO seen (identity) VALUES (?)", added)
            db.executemany("DELETE FROM seen WHERE identity = ?", dropped)
            return ids

        try:
            ids = await asyncio.to_thread(self._tx, run, self._durable)
        except StoreUnavailable as e:
            self._refused_bytes = sum(len(job) for job, _ in rows) + sum(len(i) for (i,) in added)
            self.refused.failed(e)
            raise
        self.refused.ok()
        for job, row_id in zip(jobs, ids, strict=True):
            job.inbox_id = row_id

    async def probe(self) -> None:
        """A write of the size last refused, committed as ``/scoring``'s are, then removed: the inbox's run of
        refusals ends once the disk takes such writes again, though no API sends any (``recheck``). Known from
        ``/scoring``'s writes alone, it said "refused" for as long as the validator ran once no API retried
        (stopped, or its outbox lost). One still refused leaves the run on, its latest try (``OutageLog.retry_failed``)."""
        size = max(1, self._refused_bytes)
        async with self.accepting:
            try:
                await asyncio.to_thread(self._tx, lambda db: db.execute(
                    "INSERT INTO probe (data) VALUES (zeroblob(?))", (size,)), self._durable)
                await asyncio.to_thread(self._tx, lambda db: db.execute("DELETE FROM probe"), self._durable)
            except StoreUnavailable as e:
                self.refused.retry_failed(f"a test write of {size} bytes: {e}")
                return
        self.refused.ok()

    @property
    def waiting(self) -> int:
        """How many jobs (at most) wait on disk for room in the queue: new payloads wait behind them."""
        return max(0, self._last_id - self._next_id + 1)

    # --- the scoring side ---------------------------------------------------------------------------
    def settle(self, jobs: Iterable[ScoringJob]) -> None:
        """Remove the rows of jobs done with (scored, or dropped for a reason the caller logged), then load
        jobs waiting on disk into the room they leave. Never raises: scoring goes on, and a row left behind
        only means its job is scored once more after a restart (said in a WARNING)."""
        ids = [(job.inbox_id,) for job in jobs if job.inbox_id is not None]
        if not ids:
            return
        try:
            self._tx(lambda db: db.executemany("DELETE FROM inbox WHERE id = ?", ids))
        except StoreUnavailable as e:
            self.unsettled.failed(e)
        else:
            self.unsettled.ok()
            self._reclaim_now_and_then()
        if self.waiting:
            self._load()

    # --- start ---------------------------------------------------------------------------------------
    def seen(self, size: int) -> list[Identity]:
        """The last ``size`` identities of the seen-list, oldest first (the file keeps no more than that)."""
        try:
            self._tx(lambda db: db.execute(
                "DELETE FROM seen WHERE id <= (SELECT id FROM seen ORDER BY id DESC LIMIT 1 OFFSET ?)", (size,)))
            rows = self._query("SELECT identity FROM seen ORDER BY id")
        except StoreUnavailable as e:
            logger.warning("scoring inbox: the payloads seen before could not be read ({}): one sent again now is "
                           "scored again", e)
            return []
        return [decode_identity(raw) for (raw,) in rows]

    def restore(self, queue: ScoringQueue) -> int:
        """At start: every unscored job back into ``queue``, oldest first, as far as its bounds allow (the rest
        waits on disk, loaded as room frees); one too old to score now is dropped with one summary line.
        Returns how many jobs were put in the queue."""
        self._queue = queue
        (first, last), = self._query("SELECT MIN(id), MAX(id) FROM inbox")
        if first is None:
            return 0
        self._next_id, self._last_id = first, last
        before = queue.qsize()
        self._load()
        loaded = queue.qsize() - before
        logger.info("scoring inbox: {} unscored organic payload(s) put back in the scoring queue from {}{}", loaded,
                    self.path, f"; {self.waiting} more wait on disk for room" if self.waiting else "")
        return loaded

    def _load(self) -> None:
        """Jobs waiting on disk into the queue while it has room, oldest first; those too old now, and any
        row that cannot be read, are removed (each kind counted in one line)."""
        queue = self._queue
        assert queue is not None
        stale, damaged = [], []
        try:
            while self.waiting and queue.maxsize > queue.qsize():
                rows = self._query("SELECT id, job, created_at FROM inbox WHERE id >= ? AND id <= ? ORDER BY id "
                                   "LIMIT ?", (self._next_id, self._last_id, PAGE))
                if not rows:
                    self._next_id = self._last_id + 1
                    break
                if not self._load_rows(rows, queue, stale, damaged):
                    break
        except StoreUnavailable as e:
            logger.warning("scoring inbox: jobs waiting on disk not loaded this time: {}", e)
        self._drop(stale, damaged, queue)

    def _load_rows(self, rows: list[Any], queue: ScoringQueue, stale: list[int], damaged: list[int]) -> bool:
        """Queue the rows' jobs in order; False once one does not fit (it stays first in line)."""
        for row_id, raw, created_at in rows:
            if queue.is_stale(created_at):
                stale.append(row_id)
            else:
                try:
                    job = decode_job(row_id, raw)
                except (ValueError, KeyError, TypeError, AttributeError):
                    damaged.append(row_id)
                else:
                    if not queue.room_for([job]):
                        return False
                    queue.put_nowait(job)
            self._next_id = row_id + 1
        return True

    def _drop(self, stale: list[int], damaged: list[int], queue: ScoringQueue) -> None:
        if not stale and not damaged:
            return
        try:
            self._tx(lambda db: db.executemany("DELETE FROM inbox WHERE id = ?", [(i,) for i in stale + damaged]))
        except StoreUnavailable as e:
            logger.warning("scoring inbox: dropped jobs not removed from the file ({}): met again at the next start", e)
        if stale:
            queue.dropped_stale(len(stale), "stored in the scoring inbox")
        if damaged:
            logger.warning("scoring inbox: dropped {} stored organic payload(s) that could not be read back "
                           "(a damaged or hand-edited file), not scored", len(damaged))

    async def close(self) -> None:
        """Once a write still running in its thread is done (a POST's, cut short at shutdown)."""
        async with self.accepting:
            self._durable.close()
            self._close_db()


def open_inbox(path: Path) -> ScoringInbox:
    """The inbox at ``path``; a file that cannot be opened or is not a database stops the start in one line."""
    try:
        return ScoringInbox(path)
    except (OSError, sqlite3.Error) as e:
        raise SettingsError(f"SCORING_INBOX_FILE: {path} cannot be used as the scoring inbox ({e})"
                            f"{why_not_opened(path, e)}") from None
