"""Found by an audit comparing the backends call for call: usage written once whatever fails or is
cancelled, a key read during its rotation, a re-pinned session's exact times."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.store.base import Store
from shared.store.redis import RedisStore
from shared.store.sessions import RedisSessionStore, SQLiteSessionStore
from shared.store.sqlite import SQLiteStore
from shared.store.usage import UsageRecorder
from tests.store.conftest import REDIS_URL, SlowWriteStore


class PruneFailsOnce(SQLiteStore):
    """The window prune meets another worker's write lock once (SQLite's busy timeout ran out)."""

    failed = False

    def _prune_windows(self, now: float) -> None:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database is locked")
        super()._prune_windows(now)


async def test_a_flush_that_fails_after_writing_usage_is_not_counted_twice(tmp_path: Path) -> None:
    """The prune ran after the commit: its failure failed a flush whose usage was stored, and the
    recorder wrote it again (100 tokens recorded, 200 stored)."""
    store = PruneFailsOnce(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store)
    usage.record(rec.id, prompt_tokens=40, completion_tokens=60)
    assert await usage.flush() == 0, "the failed flush keeps its batch"
    assert await usage.flush() == 1
    assert (await store.usage(rec.id)).totals.tokens == 100
    await store.close()


async def test_stopping_the_flusher_mid_write_loses_nothing(tmp_path: Path) -> None:
    """At shutdown the flusher is cancelled: landing during a write (Redis awaits it), the cancel dropped
    the batch, and the last flush found nothing to write."""
    store = SlowWriteStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store, flush_interval=0.01)
    usage.record(rec.id, prompt_tokens=40, completion_tokens=60)
    flusher = asyncio.create_task(usage.run())
    await asyncio.wait_for(store.writing.wait(), 5)
    flusher.cancel()
    await asyncio.sleep(0.05)
    store.go.set()  # the write in flight ends; then the flusher stops
    with pytest.raises(asyncio.CancelledError):
        await flusher
    await usage.flush()  # the owner's last flush
    assert (await store.usage(rec.id)).totals.tokens == 100
    await store.close()


@pytest.mark.redis
async def test_a_key_read_by_id_during_its_rotation_is_found() -> None:
    """The index named the old hash, the rotation moved the record, the read by hash found nothing: a 404
    for a key that exists, and an admin's modify during a rotation was dropped."""
    if not REDIS_URL:
        pytest.skip("REDIS_URL is not set: the Redis backend needs a server (CI sets it; .ci/run)")
    store = RedisStore.from_url(REDIS_URL, namespace=f"test-{secrets.token_hex(6)}")
    try:
        _, rec = await store.create_key(10)
        real_get = store.get_key
        rotated = False

        async def get_key_rotating_first(key_hash: str):  # type: ignore[no-untyped-def]
            nonlocal rotated
            if not rotated:
                rotated = True
                await store.rotate_key(rec.id)  # lands between the index read and the record read
            return await real_get(key_hash)

        store.get_key = get_key_rotating_first  # type: ignore[method-assign]
        found = await store.get_key_by_id(rec.id)
        assert found is not None and found.id == rec.id and found.key_hash != rec.key_hash
    finally:
        async for name in store.redis.scan_iter(match=f"{store.namespace}:*"):
            await store.redis.delete(name)
        await store.close()


@contextlib.asynccontextmanager
async def session_stores(tmp_path: Path) -> AsyncIterator[list]:
    stores: list = [SQLiteSessionStore(tmp_path / "s.db")]
    namespace = f"test-{secrets.token_hex(6)}"
    if REDIS_URL:
        stores.append(RedisSessionStore.from_url(REDIS_URL, namespace=namespace))
    try:
        yield stores
    finally:
        for s in stores:
            if isinstance(s, RedisSessionStore):
                async for name in s.r.scan_iter(match=f"{namespace}:*"):
                    await s.r.delete(name)
            await s.aclose()


async def test_a_re_pinned_session_keeps_its_exact_times(tmp_path: Path) -> None:
    """Redis re-encoded the session in Lua with 14 significant digits: expires_at 1796407775.553789
    became 1796407775.5538 after a failover, on Redis only. (Redis runs when REDIS_URL is set, as in CI.)"""
    async with session_stores(tmp_path) as stores:
        for sessions in stores:
            opened = await sessions.open("key-1", "m", 1, "hk1", duration=3600.123456, failover=True)
            moved = await sessions.repin(opened.id, 2, "hk2")
            assert moved is not None and (moved.uid, moved.hotkey) == (2, "hk2")
            again = await sessions.get(opened.id)
            assert again is not None and again.uid == 2, type(sessions).__name__
            assert (again.expires_at, again.created_at) == (opened.expires_at, opened.created_at), \
                type(sessions).__name__


async def test_a_usage_batch_of_zeros_adds_no_day(store: Store) -> None:
    """SQLite kept an all-zero day row that Redis does not (a response counted the day before midnight)."""
    from shared.store.base import UsageCounts, UsageDelta

    _, rec = await store.create_key(10)
    await store.add_usage([UsageDelta(key_id=rec.id, day="2025-01-01", counts=UsageCounts(), last_used_at=5.0)])
    report = await store.usage(rec.id)
    assert report.days == {} and report.last_used_at == 5.0


async def test_a_session_is_moved_or_closed_only_while_it_pins_the_miner_that_failed(tmp_path: Path) -> None:
    """Two workers that saw the same pinned miner fail each moved the session (it bounced from miner to
    miner), and a sweep that read it before a request moved it closed it: on both backends."""
    async with session_stores(tmp_path) as stores:
        for sessions in stores:
            name = type(sessions).__name__
            opened = await sessions.open("key-1", "m", 1, "hk1", duration=60, failover=True)
            first = await sessions.repin(opened.id, 2, "hk2", if_pinned=(1, "hk1"))
            second = await sessions.repin(opened.id, 3, "hk3", if_pinned=(1, "hk1"))  # saw uid 1 fail too
            assert first is not None and second is not None and (second.uid, second.hotkey) == (2, "hk2"), name
            assert not await sessions.close(opened.id, if_pinned=(1, "hk1")), name
            assert not await sessions.close(opened.id, if_pinned=(2, "hk-other")), name
            kept = await sessions.for_key("key-1")
            assert kept is not None and kept.uid == 2 and kept.expires_at == opened.expires_at, name
            assert await sessions.close(opened.id, if_pinned=(2, "hk2")), name
            assert await sessions.get(opened.id) is None and await sessions.for_key("key-1") is None, name
            assert [s for s in await sessions.active() if s.id == opened.id] == [], name
            assert await sessions.repin(opened.id, 4, "hk4", if_pinned=(2, "hk2")) is None, name


@pytest.mark.redis
async def test_the_keys_session_is_found_while_it_is_being_replaced() -> None:
    """Redis read the key's pointer, then the session it named: a new session opened in between (the old
    one deleted) made for_key None, and the chat request sent then ran without the key's session."""
    if not REDIS_URL:
        pytest.skip("REDIS_URL is not set: the Redis backend needs a server (CI sets it; .ci/run)")
    sessions = RedisSessionStore.from_url(REDIS_URL, namespace=f"test-{secrets.token_hex(6)}")
    try:
        await sessions.open("key-1", "m", 1, "hk1", duration=60, failover=False)
        real_get, replaced = sessions.get, []

        async def get_after_a_reopen(session_id: str):  # type: ignore[no-untyped-def]
            if not replaced:  # lands between the pointer read and the session read
                replaced.append(await sessions.open("key-1", "m", 2, "hk2", duration=60, failover=False))
            return await real_get(session_id)

        sessions.get = get_after_a_reopen  # type: ignore[method-assign]
        found = await sessions.for_key("key-1")
        assert found is not None and found.key_id == "key-1"
    finally:
        async for name in sessions.r.scan_iter(match=f"{sessions.ns}:*"):
            await sessions.r.delete(name)
        await sessions.aclose()
