"""The SQLite key store's decoded records: memoised (a key row is read on every request), per store, bounded."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from shared.store import sqlite as sqlite_module
from shared.store.base import hash_key
from shared.store.sqlite import SQLiteStore


async def test_a_closed_stores_key_records_are_not_held_by_the_process(tmp_path: Path) -> None:
    """The decoded records were one cache for the whole process: a store closed (a CLI command, a tool or a test
    that opens one file after another) left up to 4,096 of its keys' records held for good. Each store's
    are its own, and go with it."""
    store = SQLiteStore(tmp_path / "a.db")
    _, made = await store.create_key(10)
    record = await store.get_key_by_id(made.id)
    assert record is not None and await store.get_key_by_id(made.id) is record  # memoised: decoded once
    held = weakref.ref(record)
    await store.close()
    del store, record
    gc.collect()
    assert held() is None


async def test_a_stores_records_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "RECORDS_CACHED", 2)
    store = SQLiteStore(tmp_path / "a.db")
    try:
        secrets = [(await store.create_key(10))[0] for _ in range(5)]
        for secret in secrets:
            assert (await store.authorize(hash_key(secret), scope="chat")).status == "ok"
        assert store._record.cache_info().currsize == 2
    finally:
        await store.close()
