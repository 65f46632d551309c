"""The SQLite key store's decoded records: memoised (a key row is read on every request), per store, bounded, one per
key."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from shared.store import sqlite as sqlite_module
from shared.store.base import KeyChanges, UsageCounts, UsageDelta, hash_key, usage_day
from shared.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0  # the busy key's first use


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


async def test_a_busy_key_keeps_one_cached_record_and_the_others_keep_theirs(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache was keyed by the whole row, ``last_used_at`` in it: each usage flush that moved a busy key's last
    use added another copy of its record, until that one key filled the cache and pushed out the rows of the keys
    used less often (decoded again on their next request). One entry per key now, and a key changed, rotated or
    deleted is still seen at once."""
    monkeypatch.setattr(sqlite_module, "RECORDS_CACHED", 8)
    store = SQLiteStore(tmp_path / "a.db")
    try:
        busy, busy_key = await store.create_key(1000)
        quiet, _ = await store.create_key(1000)
        quiet_record = (await store.authorize(hash_key(quiet), scope="chat")).record
        for n in range(20):  # a request, then the usage flush that moves the key's last use
            assert (await store.authorize(hash_key(busy), scope="chat")).status == "ok"
            await store.add_usage([UsageDelta(busy_key.id, usage_day(T0), UsageCounts(requests=1), T0 + n)])
            assert (await store.get_key_by_id(busy_key.id)).last_used_at == T0 + n  # the admin sees it move
        assert store._record.cache_info().currsize == 2  # one entry per key (it was 8: the busy key's copies)
        assert (await store.authorize(hash_key(quiet), scope="chat")).record is quiet_record  # still cached

        await store.update_key(busy_key.id, KeyChanges(rate_limit=7, name="renamed"))
        seen = await store.authorize(hash_key(busy), scope="chat")
        assert (seen.record.rate_limit, seen.record.name, seen.decision.limit) == (7, "renamed", 7)
        rotated = await store.rotate_key(busy_key.id)
        assert (await store.authorize(hash_key(busy), scope="chat")).status == "unknown"
        assert (await store.authorize(hash_key(rotated[0]), scope="chat")).record.rate_limit == 7
        await store.delete_key(quiet_record.id)
        assert (await store.authorize(hash_key(quiet), scope="chat")).status == "unknown"
    finally:
        await store.close()
