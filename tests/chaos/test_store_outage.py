"""Store outage: the Redis behind the API is cut, or hangs. Every request is a quick 503 with a clear
message (never a 200 without a key check, never a hang), and the API recovers by itself, with the
same store object, once Redis is back.

The real Redis is shared, so the outage is made by a TCP proxy between the API and Redis.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared.store.redis import RedisStore
from tests.chaos.fleet import HONEST, MESSAGES, Fleet, fleet, wait_until
from tests.chaos.tcp_proxy import TcpProxy, tcp_proxy

REDIS_URL = os.environ.get("REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set: the store-outage tests need a Redis")
ADMIN = "admin-secret-for-tests"


@contextlib.asynccontextmanager
async def api_on_proxied_redis(tmp_path: Path) -> AsyncIterator[tuple[Fleet, TcpProxy, str]]:
    assert REDIS_URL
    url = urllib.parse.urlparse(REDIS_URL)
    namespace = f"chaos-{uuid.uuid4().hex[:12]}"
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}", namespace=namespace)
        async with fleet(tmp_path, {1: HONEST}) as f:
            sqlite, f.ctx.store = f.ctx.store, store
            if f.ctx.usage is not None:
                f.ctx.usage.store = store
            await sqlite.close()
            secret, _ = await store.create_key(1000, name="outage")
            try:
                yield f, proxy, secret
            finally:
                await store.close()
                direct = RedisStore.from_url(REDIS_URL, namespace=namespace)
                async for key in direct.redis.scan_iter(match=f"{namespace}*"):
                    await direct.redis.delete(key)
                await direct.close()


async def chat(s: aiohttp.ClientSession, f: Fleet, key: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "seed": 1},
                      headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, await r.json(content_type=None), time.monotonic() - started


@pytest.mark.parametrize("outage", ["cut", "stall"])
async def test_store_outage_is_503_never_open_and_recovers_by_itself(tmp_path: Path, outage: str) -> None:
    async with api_on_proxied_redis(tmp_path) as (f, proxy, key), aiohttp.ClientSession() as s:
        assert (await chat(s, f, key))[0] == 200
        await (proxy.cut() if outage == "cut" else proxy.stall())
        for who in (key, "sn1-not-a-key"):  # a valid key and a forged one: both 503, neither gets in
            status, body, elapsed = await chat(s, f, who)
            assert status == 503, body
            assert body["error"]["code"] == "store_unavailable" and "unreachable" in body["error"]["message"]
            assert elapsed < 5, f"a {outage} store must fail fast (socket timeouts), took {elapsed:.1f}s"
        async with s.post(f.url + "/api_management/create-api-key?rate_limit=5", headers={"admin-key": ADMIN}) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "store_unavailable"
        await proxy.restore()
        statuses: list[int] = []

        async def recovered() -> bool:
            statuses.append((await chat(s, f, key))[0])
            return statuses[-1] == 200

        deadline = time.monotonic() + 15
        while not await recovered() and time.monotonic() < deadline:
            await wait_until(lambda: False, 0.2)
        assert statuses[-1] == 200, f"no recovery after the store came back: {statuses}"
        assert set(statuses) <= {200, 503}
