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

T = TypeVar("T")


class SQLiteTables:
    label = "sqlite"

    def __init__(self, path: str | Path, schema: str, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")  # WAL + NORMAL survives a process crash
        self._db.execute("PRAGMA busy_timeout=10000")
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
