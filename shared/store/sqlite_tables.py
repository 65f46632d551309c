"""A small base for SQLite-backed tables beside the key store (outbox, sessions).

Each gets its own connection to the API's SQLite file (WAL, so many worker
processes share it), write transactions taken with ``BEGIN IMMEDIATE`` so
concurrent writers serialise instead of failing, and every sqlite error
surfaced as ``StoreUnavailable`` (a 503 at the edge, never an open door).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from shared.store.base import StoreUnavailable

# How long a statement waits for another connection's write lock. Calls run on the event loop, so
# this is also how long the whole worker (every request, /health included) can freeze on a locked
# file: SQLite's default here was 10 s, which froze the loop 10 s per request while another process
# held the lock. WAL commits take micro- to milliseconds, so half a second is ample for real
# contention; past it the caller gets StoreUnavailable (503) and the loop moves on.
BUSY_TIMEOUT_S = 0.5
# Opening is different: the workers of one API start together and each creates the file, switches
# it to WAL and creates its tables, one after another under SQLite's locks, before it serves anything.
# Held to 0.5 s there, a worker on a slow disk died at start ("database is locked", seen in CI with
# WORKERS=4); so opening waits up to this long, and is retried if SQLite refuses to wait at all (it
# does, rather than risk a deadlock between two connections upgrading their locks).
OPEN_TIMEOUT_S = 30.0

WAL_SIZE_LIMIT = 16 << 20  # bytes of -wal file kept after a checkpoint

T = TypeVar("T")


def open_db(path: Path, *, synchronous: str, schema: str = "") -> sqlite3.Connection:
    """A WAL connection to ``path`` with ``schema`` created, then ``BUSY_TIMEOUT_S`` for serving."""
    create_private(path)
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while True:
        db = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")  # WAL + NORMAL survives a process crash
            # A WAL that grew once (a burst, a long read holding checkpoints back) is cut back to this after
            # each checkpoint instead of keeping its high-water mark on disk for good.
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            if schema:
                db.executescript(schema)
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            return db
        except sqlite3.OperationalError as e:
            db.close()
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create_private(path: Path) -> None:
    """Create the database file readable by its owner alone, if it is not there (an empty file is an empty
    database): it holds users' prompts and answers (stored responses, conversations, the scoring outbox), and
    SQLite gives its -wal and -shm files the database's mode. One already there that others may read (made
    by a release before 2026-12-06, as 0644) is made private, with a WARNING."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        _make_private(path)


def _make_private(path: Path) -> None:
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = file.stat().st_mode & 0o777
            if mode & 0o077:
                file.chmod(mode & 0o700)
                logger.warning("{} was readable by others ({:o}): made readable by its owner alone ({:o})", file,
                               mode, mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError as e:  # another user's file: say so, and serve on
            logger.warning("{} is readable by others and could not be made private: {}", file, e)


def expiring_table(name: str, *, index: str, on: str) -> str:
    """The schema of a table of JSON records by id, each an API key's and each expiring (sessions, stored
    responses), with one index (named ``index``, on column ``on``) for the lookups it serves."""
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {index} ON {name} ({on});
"""


class SQLiteTables:
    label = "sqlite"

    def __init__(self, path: str | Path, schema: str, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_db(self.path, synchronous=synchronous, schema=schema)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.label}: {e}") from e

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.label}: {e}") from e

    def _close_db(self) -> None:
        self._db.close()
