"""``sn1_api_store_lost``: the store-lost alert had no metric. A Redis that came back empty was an ERROR line and
a ``/ready`` 503, and a fleet scraped by Prometheus had nothing to alert on: the gauge is 1 while the store is
judged lost and 0 once a key is created again. A real API on the test Redis (``REDIS_URL``), its loss made by
deleting its namespace (what a restart without persistence, or a ``FLUSHALL``, does to it)."""

from __future__ import annotations

import secrets
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from shared.store.redis import RedisStore
from tests.chaos.fleet import Fleet, fleet_on
from tests.store.conftest import drop_keys, redis_url

ADMIN = "admin-secret-for-tests"


async def store_lost(s: aiohttp.ClientSession, f: Fleet) -> float:
    async with s.get(f.url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    (line,) = [line for line in text.splitlines() if line.startswith("sn1_api_store_lost ")]
    return float(line.split()[1])


async def test_the_store_lost_gauge_is_1_while_the_store_is_lost_and_0_once_a_key_is_created(tmp_path: Path) -> None:
    namespace = f"test-lost-{secrets.token_hex(6)}"
    admin = aioredis.Redis.from_url(redis_url())
    try:
        async with (fleet_on(tmp_path, RedisStore.from_url(redis_url(), namespace=namespace), "lost") as (f, _),
                    aiohttp.ClientSession() as s):
            assert await store_lost(s, f) == 0
            await drop_keys(admin, namespace)  # the store comes back empty
            assert await store_lost(s, f) == 1
            assert await store_lost(s, f) == 1  # while nobody acts
            async with s.post(f.url + "/api_management/create-api-key?rate_limit=5",
                              headers={"admin-key": ADMIN}) as r:
                assert r.status == 200
            assert await store_lost(s, f) == 0
    finally:
        await drop_keys(admin, namespace)
        await admin.aclose()
