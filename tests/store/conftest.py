"""The store contract fixture: every test in ``tests/store`` runs against SQLite and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shared.store.base import Store
from shared.store.conversations import SQLiteConversationStore
from shared.store.redis import RedisStore
from shared.store.responses import RedisResponseStore, ResponseStore, SQLiteResponseStore
from shared.store.sessions import SQLiteSessionStore
from shared.store.sqlite import SQLiteStore

REDIS_URL = os.environ.get("REDIS_URL")
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]  # a fixture's params: each store test runs on both
NO_REDIS = "REDIS_URL is not set: the Redis backend needs a server (CI sets it; .ci/run)"


def redis_url() -> str:
    """REDIS_URL, or the test is skipped with the usual reason."""
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    return REDIS_URL


async def drop_keys(client: Any, namespace: str) -> None:
    """Delete every key of a test namespace from a Redis client (tests never touch anything else)."""
    async for name in client.scan_iter(match=f"{namespace}:*", count=500):
        await client.delete(name)


@contextlib.asynccontextmanager
async def stores_in_one_place(backend: str, path: Path, sqlite: Callable[[Path], Any],
                              redis: Any) -> AsyncIterator[Callable[[], Any]]:
    """Opens stores of one kind on one SQLite file (``path``) or one Redis namespace, each a worker's (``sqlite``
    and ``redis``: the two classes), all closed afterwards and the namespace dropped."""
    namespace, opened = f"test-{secrets.token_hex(6)}", []

    def open_one() -> Any:
        s = sqlite(path) if backend == "sqlite" else redis.from_url(redis_url(), namespace=namespace)
        opened.append(s)
        return s

    try:
        yield open_one
    finally:
        for s in opened:
            if isinstance(s, redis) and s is opened[0]:
                await drop_keys(s.r, namespace)
            await s.aclose()


async def swept_marks(path: Path) -> set[str]:
    """The keys whose forgotten marks are left on the SQLite file ``path`` after the session sweep, the marks'
    one sweep (``forgotten.purge``), which every API worker runs."""
    sweeper = SQLiteSessionStore(path)
    try:
        await sweeper.active()
        return {row[0] for row in sweeper._query("SELECT key_id FROM forgotten_keys", ())}
    finally:
        await sweeper.aclose()


async def conversations_of(conversations: Any, key_id: str) -> list[Any]:
    """Whatever a conversation store holds of ``key_id``'s conversations: its SQLite rows (items with them), or its
    Redis names (fences included)."""
    if isinstance(conversations, SQLiteConversationStore):
        return conversations._query("SELECT c.id, i.seq FROM conversations c LEFT JOIN conversation_items i "
                                    "ON i.conversation_id = c.id WHERE c.key_id = ?", (key_id,))
    return [name async for name in conversations.r.scan_iter(match=f"{conversations.ns}:conversation:{key_id}:*")]


async def drop_namespace(store: RedisStore) -> None:
    """Delete every Redis key of a test namespace (tests never touch anything else)."""
    await drop_keys(store.redis, store.namespace)


@pytest.fixture(params=BACKENDS)
async def responses(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    """The response store on SQLite, or on Redis or the Redis one in a fresh namespace dropped afterwards."""
    namespace = f"test-{secrets.token_hex(6)}"
    s: Any = (SQLiteResponseStore(tmp_path / "r.db") if request.param == "sqlite"
              else RedisResponseStore.from_url(redis_url(), namespace=namespace))
    try:
        yield s
    finally:
        if isinstance(s, RedisResponseStore):
            await drop_keys(s.r, namespace)
        await s.aclose()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "store.db")
        yield s
        await s.close()
        return
    async with redis_test_store() as r:
        yield r


@contextlib.asynccontextmanager
async def redis_test_store() -> AsyncIterator[RedisStore]:
    """A RedisStore in a fresh namespace, dropped afterwards; the test is skipped without REDIS_URL."""
    r = RedisStore.from_url(redis_url(), namespace=f"test-{secrets.token_hex(6)}")
    try:
        yield r
    finally:
        await drop_namespace(r)
        await r.close()


class SlowWriteStore(SQLiteStore):
    """A real SQLite store whose usage write waits for a go-ahead (a slow disk, a far Redis)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = asyncio.Event()
        self.go = asyncio.Event()

    async def add_usage(self, deltas):  # type: ignore[no-untyped-def]
        self.writing.set()
        await self.go.wait()
        await super().add_usage(deltas)
