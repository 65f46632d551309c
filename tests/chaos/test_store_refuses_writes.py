"""A Redis that answers but refuses writes: out of memory under ``noeviction``, or a read-only replica (a
failover's old primary). Every request is a 503 ``store_unavailable`` (its rate-limit charge is a write),
``/ready`` says so (its ping was a ``PING``, which both answer: the worker stayed in rotation while it
answered every request 503), the start is a WARNING, not a stop, and all is well again once Redis takes
writes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from loguru import logger

from api.main import reach_store
from shared.store.redis import RedisStore
from tests.chaos.fleet import MESSAGES, Fleet, fleet_on
from tests.chaos.own_redis import own_redis

REFUSALS = {"oom": (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0"), "OutOfMemoryError"),
            # a replica of a port nobody listens on keeps its data and is read-only
            "readonly": (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE"), "ReadOnlyError")}


@contextlib.asynccontextmanager
async def api_on_own_redis(tmp_path: Path) -> AsyncIterator[tuple[Fleet, Any, str]]:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("maxmemory-policy", "noeviction")
        async with fleet_on(tmp_path, RedisStore.from_url(url, namespace="refusals"), "refusals") as (f, secret):
            yield f, admin, secret


async def ready(s: aiohttp.ClientSession, f: Fleet) -> tuple[int, dict]:
    async with s.get(f.url + "/ready") as r:
        return r.status, await r.json()


async def chat(s: aiohttp.ClientSession, f: Fleet, key: str) -> tuple[int, dict]:
    async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "seed": 1},
                      headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
async def test_a_store_refusing_writes_is_not_ready_and_recovers_by_itself(tmp_path: Path, refusal: str) -> None:
    start, stop, error = REFUSALS[refusal]
    async with api_on_own_redis(tmp_path) as (f, admin, key), aiohttp.ClientSession() as s:
        assert (await ready(s, f))[0] == 200 and (await chat(s, f, key))[0] == 200
        await admin.execute_command(*start)
        status, body = await chat(s, f, key)
        assert (status, body["error"]["code"]) == (503, "store_unavailable"), body
        # it answers, so the caller is not told it is unreachable (it was, whatever the store did)
        assert body["error"]["message"] == "The key store is unavailable; try again shortly.", body
        status, body = await ready(s, f)
        assert status == 503 and f"the key store is unavailable: {error}" in str(body["reasons"]), body
        await admin.execute_command(*stop)
        assert (await ready(s, f))[0] == 200 and (await chat(s, f, key))[0] == 200


async def test_a_store_refusing_writes_at_start_is_a_warning_not_a_stop(tmp_path: Path) -> None:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
        try:
            await reach_store(url, "refusals")  # was SettingsError: "refused us: ... OutOfMemoryError"
        finally:
            logger.remove(sink)
        assert any("starting anyway" in line and "maxmemory" in line for line in lines), lines
