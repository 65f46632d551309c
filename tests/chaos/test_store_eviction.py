"""A Redis whose ``maxmemory-policy`` can evict: when full, it silently deletes keys this node needs (an API key,
the store marker, a rate-limit window, queued payloads) and nobody was told. The start now says so in a WARNING
and ``/ready`` in a warning (still a 200: the node serves), naming the policy and ``noeviction``; a Redis that
refuses ``CONFIG GET`` (an ACL without it, as managed Redis services hand out) is "unknown", never a crash."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from shared.store.redis import RedisStore
from tests.chaos.fleet import fleet_on
from tests.chaos.own_redis import own_redis, start_lines

EVICTING = {"allkeys-lru": "API keys (their callers get 401)", "volatile-ttl": "rate-limit windows"}


async def ready_and_start_lines(tmp_path: Path, url: str) -> tuple[int, dict, list[str]]:
    """``/ready`` of an API on ``url``, and the lines its start (``reach_store``) logs at INFO and above."""
    lines = await start_lines(url, "eviction")
    async with (fleet_on(tmp_path, RedisStore.from_url(url, namespace="eviction"), "eviction") as (f, _),
                aiohttp.ClientSession() as s, s.get(f.url + "/ready") as r):
        return r.status, await r.json(), lines


@pytest.mark.parametrize("policy", sorted(EVICTING))
async def test_an_evicting_policy_is_a_start_warning_and_a_ready_warning(tmp_path: Path, policy: str) -> None:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("maxmemory-policy", policy)
        status, body, lines = await ready_and_start_lines(tmp_path, url)
    assert status == 200 and body["ready"] is True, body  # a warning: the node serves
    (warning,) = body["warnings"]
    assert warning.startswith(f"eviction: Redis's maxmemory-policy is {policy}: when full it silently evicts"), body
    assert EVICTING[policy] in warning and "set maxmemory-policy noeviction" in warning, warning
    assert body["checks"]["eviction"]["required"] is False
    told = [line for line in lines if f"maxmemory-policy is {policy}" in line]
    assert len(told) == 1 and told[0].startswith("WARNING"), lines


async def test_noeviction_passes_quietly(tmp_path: Path) -> None:
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("maxmemory-policy", "noeviction")
        status, body, lines = await ready_and_start_lines(tmp_path, url)
    assert status == 200 and body["warnings"] == [], body
    assert body["checks"]["eviction"] == {"ok": True, "detail": "maxmemory-policy noeviction", "required": False}
    assert not [line for line in lines if "maxmemory-policy" in line], lines


async def test_a_redis_that_refuses_config_is_unknown_not_a_crash(tmp_path: Path) -> None:
    """An ACL user without ``CONFIG`` (a managed Redis's usual grant): NOPERM, told as "unknown"."""
    async with own_redis(tmp_path) as (url, admin):
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        await admin.execute_command("ACL", "SETUSER", "app", "on", ">app-password", "~*", "&*", "+@all", "-config")
        limited = url.replace("redis://", "redis://app:app-password@")
        status, body, lines = await ready_and_start_lines(tmp_path, limited)
    assert status == 200 and body["warnings"] == [], body
    detail = body["checks"]["eviction"]["detail"]
    assert "maxmemory-policy unknown" in detail and "make sure it is noeviction" in detail, body
    assert [line for line in lines if line.startswith("INFO") and "maxmemory-policy unknown" in line], lines
    assert not [line for line in lines if line.startswith(("WARNING", "ERROR"))], lines
