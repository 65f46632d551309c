"""SQLite store: the embedded default for one host (WAL, safe for many worker processes)."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from shared.store.base import ALL_SCOPES, KeyRecord, StoreUnavailable, display_prefix, hash_key, new_api_key

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
    last_used_at REAL
);
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:///./state/api.db`` -> ``./state/api.db``; ``sqlite:////abs`` -> ``/abs``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url}")
    return Path(url[len("sqlite:///"):])


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    def _row(self, row: sqlite3.Row) -> KeyRecord:
        return KeyRecord(
            id=row["id"],
            key_hash=row["key_hash"],
            prefix=row["prefix"],
            name=row["name"],
            rate_limit=row["rate_limit"],
            scopes=tuple(json.loads(row["scopes"])),
            allowed_models=tuple(json.loads(row["allowed_models"])) if row["allowed_models"] else None,
            expires_at=row["expires_at"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
        )

    async def create_key(
        self,
        rate_limit: int,
        *,
        name: str | None = None,
        scopes: tuple[str, ...] = ALL_SCOPES,
        allowed_models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        secret = new_api_key()
        record = KeyRecord(
            id=uuid.uuid4().hex[:16],
            key_hash=hash_key(secret),
            prefix=display_prefix(secret),
            rate_limit=rate_limit,
            name=name,
            scopes=tuple(scopes),
            allowed_models=tuple(allowed_models) if allowed_models else None,
            expires_at=expires_at,
            created_at=time.time(),
        )
        try:
            self._db.execute(
                "INSERT INTO api_keys (id, key_hash, prefix, name, rate_limit, scopes, allowed_models, expires_at,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (record.id, record.key_hash, record.prefix, record.name, record.rate_limit,
                 json.dumps(list(record.scopes)),
                 json.dumps(list(record.allowed_models)) if record.allowed_models else None,
                 record.expires_at, record.created_at),
            )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite: {e}") from e
        return secret, record

    async def get_key(self, key_hash: str) -> KeyRecord | None:
        try:
            row = self._db.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite: {e}") from e
        return self._row(row) if row else None

    async def delete_key(self, key_hash: str) -> bool:
        try:
            cur = self._db.execute("DELETE FROM api_keys WHERE key_hash = ?", (key_hash,))
        except sqlite3.Error as e:
            raise StoreUnavailable(f"sqlite: {e}") from e
        return cur.rowcount > 0

    async def list_keys(self) -> list[KeyRecord]:
        rows = self._db.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
        return [self._row(r) for r in rows]

    async def close(self) -> None:
        self._db.close()


def open_store(url: str, *, namespace: str = "sn1"):
    """Build the store named by ``STORE_URL``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore.from_url(url)
    raise ValueError(f"unsupported STORE_URL scheme: {url}")
