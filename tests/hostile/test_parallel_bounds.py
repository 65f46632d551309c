"""Bounds a caller could pass by sending many requests at once: a bound checked before an await and taken after it
let every request in flight pass the check before any of them was counted. On the Redis store, as a fleet runs
(its calls yield to the event loop, where the others' checks ran)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Script, chunk, sse
from tests.integration.test_responses_chain import api_on

pytestmark = pytest.mark.redis

BURST = 12


def slow() -> Script:
    """A miner that takes 2 s: every background response accepted is still running when the burst is answered."""
    return Script([(2.0, d) for d in sse(chunk("Later."), chunk(finish="stop"))])


async def burst(url: str, keys: list[str]) -> list[int]:
    """The statuses of one background response asked for with each of ``keys``, all sent at once."""
    async with aiohttp.ClientSession() as s:
        async def one(key: str) -> int:
            async with s.post(url + "/v1/responses", json={"input": "Hi", "background": True},
                              headers={"Authorization": f"Bearer {key}"}) as r:
                return r.status

        return sorted(await asyncio.gather(*(one(k) for k in keys)))


async def test_a_burst_of_background_responses_cannot_pass_the_keys_bound(tmp_path: Path) -> None:
    async with api_on("redis", tmp_path, slow(), max_background_responses=64,
                               max_background_responses_per_key=2) as api:
        assert await burst(api.url, [api.key] * BURST) == [200] * 2 + [429] * (BURST - 2)
        assert len(api.ctx.running_responses) == 2
        assert api.ctx.background_owners.keys() == api.ctx.running_responses.keys()  # no place left held


async def test_a_burst_of_background_responses_cannot_pass_the_workers_bound(tmp_path: Path) -> None:
    async with api_on("redis", tmp_path, slow(), max_background_responses=3,
                               max_background_responses_per_key=64) as api:
        keys = [api.key] + [(await api.ctx.store.create_key(1000))[0] for _ in range(BURST - 1)]
        assert await burst(api.url, keys) == [200] * 3 + [429] * (BURST - 3)
        assert len(api.ctx.running_responses) == 3
