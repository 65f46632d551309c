"""A small base for SQLite-backed tables beside the key store (outbox, sessions).

Each gets its own connection to the API's SQLite file (WAL, so many worker
processes share it), write transactions taken with ``BEGIN IMMEDIATE`` so
concurrent writers serialise instead of failing, and every sqlite error
surfaced as ``StoreUnavailable`` (a 503 at the edge, never an open door).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.store.base import StoreUnavailable

# How long a statement waits for another connection's write lock. Calls run on the event loop, so
# this is also how long the whole worker (every request, /health included) can freeze on a locked
# file: SQLite's default here was 10 s, which froze the loop 10 s per request while another process
# held the lock. WAL commits take micro- to milliseconds, so half a second is ample for real
# contention; past it the caller gets StoreUnavailable (503) and the loop moves on.
BUSY_TIMEOUT_S = 0.5

T = TypeVar("T")


class SQLiteTables:
    label = "sqlite"

    def __init__(self, path: str | Path, schema: str, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")  # WAL + NORMAL survives a process crash
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self._db.executescript(schema)

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
