"""Per-request cost of auth + rate limit, in process, for each store backend.

Run: ``python -m tests.bench.bench_auth [N]`` (or ``make bench``). Prints one line
per backend: p50/p99 in microseconds of ``api.auth.authenticate`` on a real
aiohttp request object (key extraction, SHA-256, store lookup, expiry/scope
checks and the fleet-wide rate-limit charge). Redis needs ``REDIS_URL``.
Not collected by pytest (the file name does not start with ``test_``).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from api.auth import authenticate
from shared.store.base import Store
from shared.store.redis import RedisStore
from shared.store.sqlite import SQLiteStore

DEFAULT_N = 10_000


async def measure(store: Store, n: int) -> tuple[float, float]:
    """p50 and p99 (us) of ``n`` sequential authenticate calls on one key (every one admitted and charged)."""
    secret, _ = await store.create_key(10 * n)
    request = make_mocked_request("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"})
    for _ in range(200):  # warm-up: caches, script load, connection
        await authenticate(request, store, scope="chat")
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await authenticate(request, store, scope="chat")
        samples.append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def line(name: str, p50: float, p99: float, n: int) -> str:
    return f"auth+ratelimit {name:<6} p50={p50:7.1f}us p99={p99:7.1f}us n={n}"


async def run(n: int) -> list[str]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        try:
            out.append(line("sqlite", *await measure(store, n), n))
        finally:
            await store.close()
    url = os.environ.get("REDIS_URL")
    if not url:
        out.append("auth+ratelimit redis  skipped: REDIS_URL is not set")
        return out
    redis_store = RedisStore.from_url(url, namespace=f"bench-{secrets.token_hex(6)}")
    try:
        out.append(line("redis", *await measure(redis_store, n), n))
    finally:
        async for name in redis_store.redis.scan_iter(match=f"{redis_store.namespace}:*", count=500):
            await redis_store.redis.delete(name)
        await redis_store.close()
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else DEFAULT_N
    import uvloop

    for text in uvloop.run(run(n)):
        print(text, flush=True)


if __name__ == "__main__":
    main()

