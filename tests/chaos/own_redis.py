"""A Redis server of a test's own (``redis-server`` on PATH, else the test is skipped): a fault that needs the
server's configuration (``maxmemory``, ``replicaof``) or a restart cannot be made on the shared ``REDIS_URL``.

``OWN_REDIS_PORTS=lo-hi`` keeps its port in that range (a host shared by several runs, each given its own);
otherwise it is one of the test process's own (``tests/ports.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import ConnectionError as RedisConnectionError

from api.main import reach_store
from neurons.localnet import port_is_free
from tests.ports import free_port


def _port() -> int:
    span = os.environ.get("OWN_REDIS_PORTS")
    if not span:
        return free_port()
    lo, hi = (int(p) for p in span.split("-"))
    return random.choice([p for p in range(lo, hi + 1) if port_is_free(p)])  # random: parallel tests differ


class RedisServer:
    """One ``redis-server`` without persistence (as many are run): a restart brings it back empty."""

    def __init__(self, exe: str, directory: Path) -> None:
        self.exe, self.directory, self.port = exe, directory, _port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = aioredis.Redis(port=self.port)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        for _ in range(5):  # a port taken meanwhile (a parallel test): another one
            await self._start()
            if await self._ours():
                return
            await self.stop()
            self.port = _port()
            await self.client.aclose()
            self.url, self.client = f"redis://127.0.0.1:{self.port}/0", aioredis.Redis(port=self.port)
        raise RuntimeError("no free port for a Redis of our own")

    async def _ours(self) -> bool:
        """The server answering on our port is the one we started (not a parallel test's)."""
        where = (await self.client.config_get("dir")).get("dir")
        return str(where) == str(self.directory.resolve())

    async def _start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                await self.client.ping()
                return
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)

    async def restart(self) -> None:
        """Stopped and started again on the same port: it comes back empty."""
        await self.stop()
        await self._start()


@contextlib.asynccontextmanager
async def own_redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A fresh server on 127.0.0.1, stopped afterwards."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not on PATH: the test runs a Redis of its own")
    server = RedisServer(exe, tmp_path)
    try:
        await server.start()
        yield server
    finally:
        await server.client.aclose()
        await server.stop()


@contextlib.asynccontextmanager
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[str, aioredis.Redis]]:
    """``(url, admin client)`` of a fresh server on 127.0.0.1, stopped afterwards."""
    async with own_redis_server(tmp_path) as server:
        yield server.url, server.client


async def start_lines(url: str, namespace: str) -> list[str]:
    """``LEVEL message`` of each line an API's start (``reach_store``) logs at INFO and above, on the Redis at ``url``."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level="INFO")
    try:
        await reach_store(url, namespace)
    finally:
        logger.remove(sink)
    return lines
