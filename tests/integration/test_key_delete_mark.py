"""A deleted key's forgotten mark (``shared/store/forgotten.py``), set once per delete: the stored responses,
conversations and sessions share it (one ``STORE_URL``), and each store's ``forget_key`` had set it again, three
writes of one mark per delete. It is set before anything of the key is deleted, and refuses what comes after
in every store, whichever store set it (with ``RESPONSES_RETENTION_SECONDS=0``, the sessions store)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from shared.store.base import StoreUnavailable
from shared.store.forgotten import KeyForgotten
from shared.store.sqlite_tables import SQLiteTables
from tests.helpers import ApiUnderTest, api_with_miners
from tests.store.conftest import drop_keys, redis_url


def recorded(ctx: Any) -> list[str]:
    """What the key's three stores send from now on, in order: each SQL statement (SQLite's trace callback), each
    Redis command's name and first argument (a counting ``execute_command``, at the client's edge)."""
    log: list[str] = []
    for kept in (ctx.responses, ctx.conversations, ctx.sessions):
        if kept is None:
            continue
        if isinstance(kept, SQLiteTables):
            kept._db.set_trace_callback(log.append)
            continue
        send = kept.r.execute_command

        async def counting(*args: Any, _send: Callable[..., Any] = send, **options: Any) -> Any:
            log.append(" ".join(a.decode() if isinstance(a, bytes) else str(a) for a in args[:2]))
            return await _send(*args, **options)

        kept.r.execute_command = counting
    return log


def is_mark(sent: str, key_id: str) -> bool:
    return sent.startswith("INSERT OR REPLACE INTO forgotten_keys") or sent.endswith(f":response_forgotten:{key_id}")


async def admin_delete(api: ApiUnderTest, secret: str) -> None:
    async with aiohttp.ClientSession() as s, s.delete(f"{api.url}/api_management/delete-api-key/{secret}",
                                                      headers={"admin-key": "admin-secret-for-tests"}) as r:
        assert r.status == 200, await r.text()


@contextlib.asynccontextmanager
async def api_on(store: str, tmp_path: Path, retention: float) -> AsyncIterator[ApiUnderTest]:
    """The API on a SQLite file, or on Redis in a namespace of its own (dropped afterwards)."""
    if store == "sqlite":
        async with api_with_miners(tmp_path, {}, responses_retention_seconds=retention) as api:
            yield api
        return
    namespace = f"test-mark-{secrets.token_hex(6)}"
    redis = aioredis.from_url(redis_url())
    try:
        async with api_with_miners(tmp_path, {}, redis_namespace=namespace,
                                   responses_retention_seconds=retention) as api:
            yield api
    finally:
        await drop_keys(redis, namespace)
        await redis.aclose()


@pytest.mark.parametrize("retention", [86_400.0, 0.0])
@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_key_delete_writes_its_forgotten_mark_once_before_any_delete(
        tmp_path: Path, store: str, retention: float) -> None:
    async with api_on(store, tmp_path, retention) as api:
        secret, record = await api.ctx.store.create_key(1000)
        await api.ctx.sessions.open(record.id, "default", 1, "5Hotkey", duration=600, failover=False)
        log = recorded(api.ctx)
        await admin_delete(api, secret)
        marks = [sent for sent in log if is_mark(sent, record.id)]
        assert len(marks) == 1, log
        assert [sent for sent in log if not sent.startswith("BEGIN")][0] == marks[0], "the mark comes first"
        assert await api.ctx.sessions.for_key(record.id) is None
        with pytest.raises(KeyForgotten):  # a session its request still in flight opens after: refused
            await api.ctx.sessions.open(record.id, "default", 1, "5Hotkey", duration=600, failover=False)


async def test_a_store_that_fails_the_delete_leaves_the_mark_to_the_next(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored responses' store failing as the key is deleted (left to expire, a WARNING): the conversations'
    sets the mark instead, and what the key's requests in flight would open after is refused all the same."""
    async with api_on("sqlite", tmp_path, 86_400.0) as api:
        secret, record = await api.ctx.store.create_key(1000)

        async def failing(key_id: str, *, marked: bool = False) -> int:
            raise StoreUnavailable("sqlite responses: disk I/O error")

        monkeypatch.setattr(api.ctx.responses, "forget_key", failing)
        log = recorded(api.ctx)
        await admin_delete(api, secret)
        assert len([sent for sent in log if is_mark(sent, record.id)]) == 1, log
        with pytest.raises(KeyForgotten):
            await api.ctx.sessions.open(record.id, "default", 1, "5Hotkey", duration=600, failover=False)
