"""Two admins (or two API workers) changing one key at once: neither loses a change it was told
was made, and no secret handed out is dead or outlives its key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.store import sqlite as sqlite_module
from shared.store.base import KeyChanges, Store, hash_key
from shared.store.redis import RedisStore
from shared.store.sqlite import SQLiteStore
from tests.store.conftest import redis_test_store


async def test_changes_made_from_a_stale_read_keep_the_other_admins(store: Store,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker B renames the key having read it before worker A set its expiry: both changes stay."""
    _, rec = await store.create_key(5, name="team-a")
    stale = await store.get_key_by_id(rec.id)
    expiry = time.time() + 3600
    await store.update_key(rec.id, KeyChanges(expires_at=expiry))

    async def read_before_that(key_id: str):  # what B saw (the Redis store reads first, then writes)
        return stale

    real = store.get_key_by_id
    monkeypatch.setattr(store, "get_key_by_id", read_before_that)
    await store.update_key(rec.id, KeyChanges(name="team-b"))
    monkeypatch.setattr(store, "get_key_by_id", real)
    final = await store.get_key_by_id(rec.id)
    assert (final.name, final.expires_at) == ("team-b", expiry), "a revoking expiry must not be undone by a rename"


async def test_a_rotation_that_lost_a_race_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: another worker rotates between this one's read and its write. This one answers None (the
    admin's 404), not a new secret that never worked; the other worker's secret keeps working."""
    store = SQLiteStore(tmp_path / "store.db")
    other = SQLiteStore(tmp_path / "store.db")
    try:
        _, rec = await store.create_key(5)
        real = sqlite_module.new_secret
        theirs: list[str] = []

        def rotated_meanwhile(record):
            # the other worker's whole rotation lands here, between our SELECT and our UPDATE
            secret, new = real(record)
            other.admin.execute("UPDATE api_keys SET key_hash = ?, prefix = ? WHERE id = ?",
                                (new.key_hash, new.prefix, record.id))
            theirs.append(secret)
            return real(record)

        monkeypatch.setattr(sqlite_module, "new_secret", rotated_meanwhile)
        assert await store.rotate_key(rec.id) is None
        assert (await store.authorize(hash_key(theirs[0]), scope="chat")).status == "ok"
    finally:
        await store.close()
        await other.close()


@pytest.mark.redis
async def test_redis_rotation_from_a_stale_read_loses_and_a_delete_takes_the_rotated_key() -> None:
    async with redis_test_store() as a:
        b = RedisStore(a.link, namespace=a.namespace)  # a second worker on the same Redis
        _, rec = await a.create_key(5)
        stale = await a.get_key_by_id(rec.id)
        rotated = await b.rotate_key(rec.id)
        assert rotated is not None

        async def read_before_that(key_id: str):
            return stale

        a.get_key_by_id = read_before_that  # type: ignore[method-assign]
        assert await a.rotate_key(rec.id) is None, "the record moved: a's secret would be dead on arrival"
        assert (await b.authorize(hash_key(rotated[0]), scope="chat")).status == "ok"
        # a delete by id takes the record wherever a rotation moved it: no zombie key left working
        assert await b.delete_key(rec.id)
        assert (await b.authorize(hash_key(rotated[0]), scope="chat")).status == "unknown"
        assert await b.list_keys() == [] and not await b.delete_key(rec.id)
