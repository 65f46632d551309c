"""A Redis server of a test's own (``redis-server`` on PATH, else the test is skipped): a fault that needs the
server's configuration (``maxmemory``, ``replicaof``) cannot be made on the shared ``REDIS_URL``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from neurons.localnet import free_port


@contextlib.asynccontextmanager
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[str, aioredis.Redis]]:
    """``(url, admin client)`` of a fresh server on 127.0.0.1, stopped afterwards."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: the test runs a Redis of its own")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                                "--appendonly", "no", "--dir", str(tmp_path),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = aioredis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        await client.aclose()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)

