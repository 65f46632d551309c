"""Redis: a turn's requests for one key are one script call that decides each exactly as alone.

The script reads the key once and charges its requests together (``charge_each`` in Lua); these
tests hold it to the one-call-per-request script on windows built by earlier charges, and count
the script calls and round trips a turn costs on a real server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.store.base import hash_key
from shared.store.redis import RedisStore
from tests.chaos.own_redis import own_redis_server
from tests.store.conftest import redis_test_store

pytestmark = pytest.mark.redis
T0 = 1_700_000_000.0


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    async with redis_test_store() as store:
        yield store


async def _calls(store: RedisStore, *commands: str) -> int:
    stats = await store.redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in commands)


async def test_grouped_decisions_equal_one_call_per_request(redis_store: RedisStore) -> None:
    """Two keys get the same history of charges; then n requests at one instant: one key's as one
    group, the other's charged one call at a time by the one-request ``charge`` script (the
    algorithm ``window.py`` mirrors). Every decision must be the same, field for field."""
    rng = random.Random(7)
    for case in range(60):
        limit = rng.randint(1, 30)
        grouped, g_rec = await redis_store.create_key(limit)
        single, s_rec = await redis_store.create_key(limit)
        now = T0 + case * 1000
        for _ in range(rng.randint(0, 8)):
            now += rng.choice([0.0, 0.4, 1.0, 5.0, 30.0, 59.5, 61.0])
            cost = rng.randint(0, 4)
            for rec in (g_rec, s_rec):
                await redis_store.charge(f"key:{rec.id}", limit, cost=cost, now=now)
        now += rng.choice([0.0, 0.3, 1.0, 59.5, 61.0, 120.0])
        n = rng.randint(1, 12)
        scopes = [rng.choice(["chat", "chat", "no-such-scope", None]) for _ in range(n)]
        together = await redis_store._authorize_group(hash_key(grouped), scopes, now)
        alone = [(s_status, await redis_store.charge(f"key:{s_rec.id}", limit, cost=1, now=now)
                  if s_status == "ok" else None)
                 for s_status in ("scope" if s == "no-such-scope" else "ok" for s in scopes)]
        assert [(a.status, a.decision) for a in together] == alone, case
        assert all(a.record.id == g_rec.id for a in together)
        one = await redis_store.authorize(hash_key(grouped), scope="chat", now=now)  # a lone call: the same script
        assert one.decision == await redis_store.charge(f"key:{s_rec.id}", limit, cost=1, now=now), case


@pytest.fixture
async def own_server_store(tmp_path: Path) -> AsyncIterator[RedisStore]:
    """A store on a Redis of the test's own: its command counts are the server's (on the shared ``REDIS_URL``
    every other client, the suite's other workers among them, moved them)."""
    async with own_redis_server(tmp_path) as server:
        store = RedisStore.from_url(server.url, namespace="test")
        try:
            yield store
        finally:
            await store.close()


async def test_a_turn_costs_one_script_call_per_key_and_no_script_exists(own_server_store: RedisStore) -> None:
    redis_store = own_server_store
    key, _ = await redis_store.create_key(5)
    other, _ = await redis_store.create_key(100)
    await redis_store.authorize(hash_key(key), scope="chat")  # scripts loaded before counting
    before = await _calls(redis_store, "evalsha", "eval"), await _calls(redis_store, "script|exists")
    results = await asyncio.gather(*(redis_store.authorize(hash_key(key), scope="chat") for _ in range(8)),
                                   redis_store.authorize(hash_key(other), scope="chat"),
                                   redis_store.authorize(hash_key("sn1-not-a-key"), scope="chat"))
    after = await _calls(redis_store, "evalsha", "eval"), await _calls(redis_store, "script|exists")
    assert after[0] - before[0] == 3, "one script call per distinct key"
    assert after[1] == before[1], "a pipeline of registered scripts asks SCRIPT EXISTS first: a second round trip"
    assert [r.decision.allowed for r in results[:8]] == [True] * 4 + [False] * 4  # 1 used above
    assert [r.decision.remaining for r in results[:4]] == [3, 2, 1, 0]
    assert results[8].decision.remaining == 99 and results[9].status == "unknown"


async def test_a_server_that_lost_its_scripts_still_answers_a_turn(redis_store: RedisStore) -> None:
    key, _ = await redis_store.create_key(10)
    other, _ = await redis_store.create_key(10)
    await redis_store.authorize(hash_key(key), scope="chat")
    await redis_store.redis.script_flush()  # what a restarted Redis looks like to a running API
    results = await asyncio.gather(*(redis_store.authorize(hash_key(k), scope="chat") for k in (key, other, key)))
    assert [r.decision.remaining for r in results] == [8, 9, 7]
