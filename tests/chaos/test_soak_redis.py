"""The soak's verdict on Redis (``scripts/soak_redis.py``), on a real Redis: a key the run leaves with no TTL,
or a persistent key that keeps growing, fails it, as one that expires does not; and ``--store redis`` takes
its Redis from ``--redis-url`` or ``REDIS_URL``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from shared.store.base import redis_client

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from soak_redis import LONGEST_TTL_S, problems, read_held  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set: this test needs a Redis (CI sets it)")


@needs_redis
async def test_a_key_left_without_a_ttl_fails_the_verdict_and_one_that_expires_does_not() -> None:
    assert REDIS_URL
    r, ns = redis_client(REDIS_URL), f"soak-verdict-{uuid.uuid4().hex[:12]}"
    try:
        await r.set(f"{ns}:keys", "kept", px=None)
        before = await read_held(r, ns)
        for i in range(100):  # what expires by itself: no leak, however many
            await r.set(f"{ns}:response:k:{i}", "x" * 200, px=60_000)
        assert problems(before, await read_held(r, ns), requests=100) == []

        await r.set(f"{ns}:response_forgotten:k", "1")  # one left for good
        left = await read_held(r, ns)
        assert left.persistent == {"keys": 1, "response_forgotten": 1}
        assert problems(before, left, requests=100) == ["+1 response_forgotten keys with no TTL"]
    finally:
        await _drop(r, ns)


@needs_redis
async def test_a_persistent_key_growing_by_a_member_every_ten_requests_fails_the_verdict() -> None:
    assert REDIS_URL
    r, ns = redis_client(REDIS_URL), f"soak-verdict-{uuid.uuid4().hex[:12]}"
    try:
        await r.sadd(f"{ns}:sessions", "s-0")
        before = await read_held(r, ns)
        await r.sadd(f"{ns}:sessions", *(f"s-{i}" for i in range(1, 1001)))  # an index never pruned
        [problem] = problems(before, await read_held(r, ns), requests=10_000)
        assert problem.startswith("keys with no TTL grew by")

        await r.set(f"{ns}:session:s", "{}", px=int(2 * LONGEST_TTL_S * 1000))  # longer than any store sets
        assert "past the longest any store sets" in problems(before, await read_held(r, ns), requests=10**9)[-1]
    finally:
        await _drop(r, ns)


def test_store_redis_without_a_url_is_refused_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--store", "redis"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--store redis needs --redis-url or REDIS_URL" in proc.stderr


async def _drop(r: object, ns: str) -> None:
    async for name in r.scan_iter(match=f"{ns}:*"):  # type: ignore[attr-defined]
        await r.delete(name)  # type: ignore[attr-defined]
    await r.aclose()  # type: ignore[attr-defined]


@needs_redis
async def test_a_keys_usage_counters_made_during_the_run_are_no_leak_but_more_than_one_a_key_is() -> None:
    """A key the warm-up did not use gets its usage hash in the run (the mix on a loaded host FAILed on it)."""
    assert REDIS_URL
    r, ns = redis_client(REDIS_URL), f"soak-verdict-{uuid.uuid4().hex[:12]}"
    try:
        for k in ("a", "b"):
            await r.hset(f"{ns}:key:{k}", "id", k)
        await r.hset(f"{ns}:usage:a", "total:requests", 1)
        before = await read_held(r, ns)
        await r.hset(f"{ns}:usage:b", "total:requests", 1)
        assert problems(before, await read_held(r, ns), requests=1000) == []
        await r.hset(f"{ns}:usage:gone", "total:requests", 1)  # a deleted key's, left behind
        assert problems(before, await read_held(r, ns), requests=1000) == ["+2 usage keys with no TTL"]
    finally:
        await _drop(r, ns)


@needs_redis
async def test_the_soak_runs_the_apis_redis_stores_as_a_served_worker_does_and_counts_their_sockets_once(
        tmp_path: Path) -> None:
    """``--store redis`` gave each of the API's five stores a client of its own (five pools, unnamed), where a
    served worker holds two (``api.worker``: ``open_stores`` on its ``redis_links``): the soak measured what does
    not run. Its stores are now on the two named clients, every connection of the process to Redis is one of
    theirs, and the sockets the fds limit leaves out are theirs, each counted once."""
    from soak import resources, store_on

    from tests.chaos.fleet import HONEST, fleet
    from tests.integration.test_fleet_hosts import ends, tcp_links

    assert REDIS_URL
    async with fleet(tmp_path, {1: HONEST}) as f, store_on(f, tmp_path, REDIS_URL) as reader:
        head = {"Authorization": f"Bearer {f.key}"}
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(f"{f.url}/v1/chat/completions", headers=head, json={
                        "model": "sn1/deterministic", "messages": [{"role": "user", "content": "Hi"}]}) as r:
                    assert r.status == 200, await r.text()
            async with http.get(f"{f.url}/v1/responses/resp_unknown", headers=head) as r:
                assert r.status == 404, await r.text()  # read on the data client
        lister = redis_client(REDIS_URL, name="test-lister")
        try:
            listed = await lister.client_list()
        finally:
            await lister.aclose()
        mine = tcp_links(os.getpid())
        names = Counter(c["name"] for c in listed if ends(c) in mine and c["name"] != "test-lister")
        assert set(names) == {f"sn1-api-{os.getpid()}-keys", f"sn1-api-{os.getpid()}-data"}, names

        keys, data = reader.clients
        assert f.ctx.store.redis is keys
        assert all(s.r is data for s in (f.ctx.sessions, f.ctx.responses, f.ctx.conversations, reader.outbox))
        assert (await resources(0.0, redis=reader.clients)).redis_sockets == sum(names.values()), names
