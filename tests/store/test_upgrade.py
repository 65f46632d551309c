"""Keys stored by an earlier release work in this one: its keys keep working, and the columns
added since are there (an operator's keys must survive an upgrade)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from shared.store.base import hash_key
from shared.store.sqlite import SQLiteStore
from tests.store.conftest import redis_test_store

# api_keys as releases before daily_token_limit (and max_concurrent_requests, max_stored_bytes_per_day) made it
OLD_KEYS_TABLE = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, name TEXT,
    rate_limit INTEGER NOT NULL, scopes TEXT NOT NULL, allowed_models TEXT, expires_at REAL,
    created_at REAL NOT NULL, last_used_at REAL
);
"""


async def test_a_key_file_from_before_the_daily_token_limit_opens_and_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "api.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_KEYS_TABLE)
        db.execute("INSERT INTO api_keys VALUES ('00112233445566aa', ?, 'sn1-abcdef', 'old', 7, '[\"chat\"]', NULL, "
                   "NULL, 1.0, NULL)", (hash_key("sn1-old-secret"),))
    db.close()
    store = SQLiteStore(path)
    again = SQLiteStore(path)  # a second worker opening the upgraded file finds the column there
    try:
        old = await store.get_key(hash_key("sn1-old-secret"))
        assert old is not None and (old.name, old.rate_limit, old.daily_token_limit) == ("old", 7, None)
        assert (old.max_concurrent_requests, old.max_stored_bytes_per_day) == (None, None)  # the API's defaults
        auth = await store.authorize(hash_key("sn1-old-secret"), scope="chat")
        assert auth.status == "ok" and auth.record.max_stored_bytes_per_day is None
        secret, new = await again.create_key(5, daily_token_limit=300, max_stored_bytes_per_day=1000)
        got = await store.get_key(hash_key(secret))
        assert (got.daily_token_limit, got.max_stored_bytes_per_day) == (300, 1000)
    finally:
        await store.close()
        await again.close()


@pytest.mark.redis
async def test_a_redis_key_from_before_the_daily_token_limit_still_works() -> None:
    async with redis_test_store() as store:
        secret, rec = await store.create_key(5)
        added_since = ("daily_token_limit", "max_concurrent", "max_stored_bytes_per_day")
        await store.redis.hdel(store.key("key", rec.key_hash), *added_since)  # as an earlier release wrote it
        auth = await store.authorize(hash_key(secret), scope="chat")
        assert auth.status == "ok" and auth.record.daily_token_limit is None
        assert auth.record.max_stored_bytes_per_day is None and auth.record.max_concurrent_requests is None
        again = await store.get_key_by_id(rec.id)
        assert (again.daily_token_limit, again.max_stored_bytes_per_day) == (None, None)


async def test_a_store_file_others_could_read_is_made_private_with_a_warning(tmp_path: Path) -> None:
    """Releases before 2026-12-06 created the file 0644 (every local user could read the key hashes, stored
    prompts and answers); new files are 0600, and one already there kept its mode, with no word of it."""
    from loguru import logger

    path = tmp_path / "api.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_KEYS_TABLE)
    path.chmod(0o644)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        store = SQLiteStore(path)
        await store.list_keys()
        await store.close()
    finally:
        logger.remove(sink)
    assert path.stat().st_mode & 0o777 == 0o600
    assert any(str(path) in w and "readable by its owner alone" in w for w in warnings), warnings



async def test_an_empty_file_made_ahead_for_the_store_is_a_new_store_not_an_old_one(tmp_path: Path) -> None:
    """A deploy that makes the store file ahead (``touch``, ``install -m 644 /dev/null``) got four WARNINGs at the
    API's first start: the file "made before 2026-12-06" (run `sn1 vacuum`), then it and its -wal and -shm each
    "readable by others". It holds nothing: it is made private in silence, and gives freed space back as a new
    file does."""
    from loguru import logger

    from api.main import _warn_unreclaimed
    from shared.store import sqlite_tables

    path = tmp_path / "api.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        _warn_unreclaimed(path)  # the API's start reads it before it opens it
        store = SQLiteStore(path)
        await store.create_key(60)
        modes = _modes(path)
        await store.close()
    finally:
        logger.remove(sink)
    assert warnings == []
    assert modes == {"api.db": 0o600, "api.db-wal": 0o600, "api.db-shm": 0o600}
    assert sqlite_tables.unreclaimed(path) is None


def _modes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in sorted(path.parent.glob(f"{path.name}*"))}


# The key store as the release before usage by model made it (no usage_models table)
BEFORE_MODELS = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, name TEXT,
    rate_limit INTEGER NOT NULL, scopes TEXT NOT NULL, allowed_models TEXT, expires_at REAL,
    created_at REAL NOT NULL, last_used_at REAL, daily_token_limit INTEGER, max_concurrent INTEGER,
    max_stored_bytes_per_day INTEGER
);
CREATE TABLE rate_windows (bucket TEXT PRIMARY KEY, state BLOB NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE usage_daily (
    key_id TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0, rate_limited INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
CREATE INDEX usage_daily_day ON usage_daily (day);
"""


async def test_a_store_file_from_before_usage_by_model_keeps_its_usage_and_counts_models_from_now_on(
        tmp_path: Path) -> None:
    """The usage a key had is read as it was (its days without a breakdown); the next flush's models are stored
    beside it, by any worker on the file."""
    from shared.store.base import UsageCounts, UsageDelta
    from shared.store.usage_models import ModelCounts

    path = tmp_path / "api.db"
    with sqlite3.connect(path) as db:
        db.executescript(BEFORE_MODELS)
        db.execute("INSERT INTO api_keys (id, key_hash, prefix, name, rate_limit, scopes, created_at) "
                   "VALUES ('00112233445566aa', ?, 'sn1-abcdef', 'old', 7, '[\"chat\"]', 1.0)",
                   (hash_key("sn1-old-secret"),))
        db.execute("INSERT INTO usage_daily VALUES ('00112233445566aa', '2026-12-06', 4, 30, 12, 1, 0, 100)")
    db.close()
    store, again = SQLiteStore(path), SQLiteStore(path)
    try:
        before = await store.usage("00112233445566aa")
        assert before.days["2026-12-06"].tokens == 42 and before.days["2026-12-06"].models == {}
        await again.add_usage([UsageDelta("00112233445566aa", "2026-12-07", UsageCounts(
            requests=1, prompt_tokens=5, completion_tokens=2, models={"alpha": ModelCounts(1, 5, 2)}), 2.0)])
        report = await store.usage("00112233445566aa")
        assert report.totals.tokens == 49 and report.stored_bytes == {"2026-12-06": 100}
        assert report.days["2026-12-07"].models == {"alpha": ModelCounts(1, 5, 2)}
        assert report.days["2026-12-06"].models == {}
    finally:
        await store.close()
        await again.close()
