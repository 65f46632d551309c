"""Keys and limits across real API processes: 4 workers on one SQLite file, 2 APIs on one Redis.

These start ``sn1 api`` as child processes on free ports and talk HTTP to them,
as a client of a fleet would. ``GET /v1/usage`` is the probe: it authenticates
and charges exactly like every user endpoint but needs no miner.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.keys.procs import ADMIN, ApiProcess, prepare, start_api, stop_on_redis, wait_ready

REDIS_URL = os.environ.get("REDIS_URL")
AK = {"admin-key": ADMIN}


@pytest.fixture(scope="module")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("fleet")
    return directory, prepare(directory)


@pytest.fixture(scope="module")
def sqlite_fleet(base_env: tuple[Path, dict[str, str]]) -> Iterator[ApiProcess]:
    directory, env = base_env
    api = start_api(directory, env, store_url=f"sqlite:///{directory / 'fleet.db'}", workers=4)
    try:
        wait_ready([api], workers=4)
        yield api
    finally:
        api.kill()


async def create(http: aiohttp.ClientSession, url: str, limit: int) -> dict:
    async with http.post(f"{url}/api_management/create-api-key/?rate_limit={limit}", headers=AK) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def burst(http: aiohttp.ClientSession, urls: list[str], key: str, n: int) -> Counter:
    """``n`` concurrent charged requests spread over ``urls``; returns the count of each status."""
    async def one(i: int) -> int:
        async with http.get(f"{urls[i % len(urls)]}/v1/usage", headers={"api-key": key}) as r:
            await r.read()
            return r.status

    return Counter(await asyncio.gather(*(one(i) for i in range(n))))


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=250, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def test_sqlite_four_workers_admit_exactly_the_limit(sqlite_fleet: ApiProcess) -> None:
    async with session() as http:
        key = (await create(http, sqlite_fleet.url, 100))["api_key"]
        assert await burst(http, [sqlite_fleet.url], key, 500) == Counter({200: 100, 429: 400})


async def test_sqlite_modify_and_delete_reach_every_worker_at_once(sqlite_fleet: ApiProcess) -> None:
    url = sqlite_fleet.url
    async with session() as http:
        created = await create(http, url, 1000)
        key = created["api_key"]
        async with http.put(f"{url}/api_management/modify-api-key/{key}?rate_limit=777", headers=AK) as r:
            assert r.status == 200
        limits = set()
        for _ in range(40):  # new connections each time: SO_REUSEPORT spreads them over the 4 workers
            async with http.get(f"{url}/v1/usage", headers={"api-key": key}) as r:
                limits.add(r.headers["x-ratelimit-limit-requests"])
        assert limits == {"777"}
        async with http.delete(f"{url}/api_management/delete-api-key/{created['id']}", headers=AK) as r:
            assert r.status == 200
        assert await burst(http, [url], key, 40) == Counter({401: 40})


async def test_sqlite_sigkill_mid_write_loses_no_acknowledged_key(base_env: tuple[Path, dict[str, str]]) -> None:
    directory, env = base_env
    db = directory / "crash.db"
    api = start_api(directory, env, store_url=f"sqlite:///{db}", workers=2, name="crash")
    acknowledged: list[str] = []
    try:
        wait_ready([api], workers=2)
        async with session() as http:
            async def creator() -> None:
                while True:
                    try:
                        async with http.post(f"{api.url}/api_management/create-api-key/?rate_limit=5",
                                             headers=AK) as r:
                            if r.status == 200:
                                acknowledged.append((await r.json())["api_key"])
                    except (TimeoutError, aiohttp.ClientError):
                        return

            tasks = [asyncio.create_task(creator()) for _ in range(8)]
            async with asyncio.timeout(30):
                while len(acknowledged) < 60:  # noqa: ASYNC110 - polling a list other tasks fill
                    await asyncio.sleep(0.01)
            api.kill(signal.SIGKILL)  # mid-stream: eight creates are in flight
            await asyncio.gather(*tasks)
    finally:
        api.kill()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    again = start_api(directory, env, store_url=f"sqlite:///{db}", workers=1, name="restarted")
    try:
        wait_ready([again])
        async with session() as http:
            statuses: Counter = Counter()
            for key in acknowledged:
                async with http.get(f"{again.url}/v1/usage", headers={"api-key": key}) as r:
                    statuses[r.status if r.status != 200 else 200] += 1
                    if r.status != 200:
                        statuses[await r.text()] += 1
            assert statuses == Counter({200: len(acknowledged)}), again.log.read_text()[-2000:]
    finally:
        again.kill()


@pytest.mark.redis
async def test_redis_two_apis_share_keys_and_one_limit(base_env: tuple[Path, dict[str, str]]) -> None:
    if not REDIS_URL:
        pytest.skip("REDIS_URL is not set: the Redis fleet test needs a server")
    directory, env = base_env
    namespace = f"test-fleet-{secrets.token_hex(6)}"
    apis = [start_api(directory, env, store_url=REDIS_URL, namespace=namespace, name=f"redis{i}") for i in range(2)]
    try:
        wait_ready(apis)
        urls = [a.url for a in apis]
        async with session() as http:
            created = await create(http, urls[0], 100)
            key = created["api_key"]
            assert await burst(http, urls, key, 500) == Counter({200: 100, 429: 400})
            async with http.get(f"{urls[1]}/api_management/api-keys", headers=AK) as r:
                assert created["id"] in {k["id"] for k in (await r.json())["data"]}
            async with http.delete(f"{urls[1]}/api_management/delete-api-key/{key}", headers=AK) as r:
                assert r.status == 200
            assert await burst(http, urls, key, 10) == Counter({401: 10})
    finally:
        stop_on_redis(apis, REDIS_URL, namespace)
