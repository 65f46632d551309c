"""Redis sessions end by Redis's clock: API hosts whose clocks disagree agree on when a session ends.

Each host used its own clock: the opening host's ``now`` set ``expires_at`` (and the key's PXAT), and
each reading host compared ``expires_at`` with its own ``now``. A host an hour fast opened sessions that
lived an hour past their duration, and saw every other host's session as already ended."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import pytest

from shared.store import sessions as sessions_module
from shared.store.sessions import RedisSessionStore
from tests.store.conftest import drop_keys, redis_url

HOUR = 3600.0


class HostClock:
    """The API host's clock as the session store reads it (``time.time``), set ``offset`` seconds off."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostClock]:
    host = HostClock()
    monkeypatch.setattr(sessions_module, "time", SimpleNamespace(time=host.time))
    yield host


@pytest.fixture
async def redis_sessions() -> AsyncIterator[RedisSessionStore]:
    namespace = f"test-{secrets.token_hex(6)}"
    s = RedisSessionStore.from_url(redis_url(), namespace=namespace)
    try:
        yield s
    finally:
        await drop_keys(s.r, namespace)
        await s.aclose()


async def redis_now(store: RedisSessionStore) -> float:
    seconds, micros = await store.r.time()
    return seconds + micros / 1e6


@pytest.mark.redis
async def test_a_session_opened_on_a_fast_host_ends_after_its_duration_for_every_host(
        redis_sessions: RedisSessionStore, clock: HostClock) -> None:
    before = await redis_now(redis_sessions)
    clock.offset = HOUR  # the opening host runs an hour fast
    opened = await redis_sessions.open("key-1", "m", 1, "hk1", duration=0.5, failover=False)
    assert before <= opened.created_at <= await redis_now(redis_sessions), "its times are Redis's"
    assert opened.expires_at - opened.created_at == pytest.approx(0.5)
    for offset in (HOUR, 0.0, -HOUR):
        clock.offset = offset
        assert await redis_sessions.get(opened.id) == opened, offset
        assert await redis_sessions.for_key("key-1") == opened, offset
    await asyncio.sleep(0.7)
    for offset in (HOUR, 0.0, -HOUR):  # ended for every host, its key gone from Redis
        clock.offset = offset
        assert await redis_sessions.get(opened.id) is None, offset
        assert await redis_sessions.for_key("key-1") is None, offset
        assert [s for s in await redis_sessions.active() if s.id == opened.id] == [], offset
    assert await redis_sessions.r.exists(redis_sessions._skey(opened.id)) == 0


@pytest.mark.redis
async def test_a_session_opened_on_a_slow_host_is_live_on_a_fast_one(redis_sessions: RedisSessionStore,
                                                                      clock: HostClock) -> None:
    clock.offset = -HOUR
    opened = await redis_sessions.open("key-2", "m", 1, "hk1", duration=60, failover=True)
    assert opened.expires_at - await redis_now(redis_sessions) == pytest.approx(60, abs=1)
    clock.offset = HOUR  # an hour ahead of the opener: it saw the session as ended at once
    assert await redis_sessions.get(opened.id) == opened
    moved = await redis_sessions.repin(opened.id, 2, "hk2", if_pinned=(1, "hk1"))
    assert moved is not None and moved.uid == 2 and moved.expires_at == opened.expires_at
    assert [s.id for s in await redis_sessions.active()] == [opened.id]
    ttl_ms = await redis_sessions.r.pttl(redis_sessions._skey(opened.id))
    assert 58_000 < ttl_ms <= 60_001, "Redis expires it when expires_at says, by its own clock"
