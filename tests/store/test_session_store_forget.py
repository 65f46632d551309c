"""A deleted key's session, on SQLite and on Redis alike: closed with the key, and one its requests still in flight
open after the delete (on this worker or another sharing the store) keeps nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.store import forgotten
from shared.store.forgotten import KeyForgotten
from shared.store.sessions import RedisSessionStore, SQLiteSessionStore
from tests.store.conftest import BACKENDS, stores_in_one_place


@pytest.fixture(params=BACKENDS)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Opens session stores on one SQLite file or one Redis namespace (each a worker's), all closed afterwards."""
    async with stores_in_one_place(request.param, tmp_path / "s.db", SQLiteSessionStore,
                                   RedisSessionStore) as open_one:
        yield open_one


async def pin(store: Any, key_id: str) -> Any:
    return await store.open(key_id, "default", 1, "5Hotkey", duration=600, failover=False)


async def test_a_deleted_keys_session_goes_and_a_late_open_keeps_nothing(opener: Callable[[], Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A session opened by a request of a key just deleted (the delete had closed the key's session a moment
    before) was kept to its end, up to a week, pinned for no key. It is refused now (``KeyForgotten``: the API's
    401) and keeps nothing; another key opens as ever, and the mark goes after its time."""
    deleting, late = opener(), opener()
    session = await pin(late, "key-a")
    assert await deleting.forget_key("key-a") is True
    assert await late.get(session.id) is None and await late.for_key("key-a") is None
    with pytest.raises(KeyForgotten):
        await pin(late, "key-a")
    assert await late.for_key("key-a") is None
    assert [s.key_id for s in await late.active()] == []
    assert await deleting.forget_key("key-never-pinned") is False  # nothing to close, and still refused after
    with pytest.raises(KeyForgotten):
        await pin(late, "key-never-pinned")
    other = await pin(late, "key-b")
    assert (await late.for_key("key-b")) == other
    # the mark goes after FORGOTTEN_FOR_S (key ids are never made again): none is kept for good
    monkeypatch.setattr(forgotten, "FORGOTTEN_FOR_S", 0.05)
    await deleting.forget_key("key-c")
    await asyncio.sleep(0.1)
    await late.active()  # the sessions' sweep, which on SQLite also drops the marks past their time
    assert (await pin(late, "key-c")).key_id == "key-c"
    if isinstance(late, SQLiteSessionStore):
        rows = late._query("SELECT key_id FROM forgotten_keys", ())
        assert {r[0] for r in rows} == {"key-a", "key-never-pinned"}, "key-c's mark was swept"
