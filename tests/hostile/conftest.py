"""Servers for the hostile-input suite, run on their own event loop in a thread.

Hypothesis drives synchronous tests, so the API (and a miner behind it) runs in
a background thread; requests go over raw ``http.client`` / sockets, which can
send what well-behaved clients refuse to (duplicate headers, invalid UTF-8,
CR/LF in values). Every log line the servers emit is captured for the
"no secret in any log line" checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from tests.chaos.fleet import HONEST, fleet

ADMIN_KEY = "admin-secret-for-tests"  # what tests.helpers.build_api_context configures


@dataclass
class Running:
    url: str
    host: str
    port: int
    key: str
    ctx: Any
    app: Any
    logs: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the servers' loop (e.g. to create a key in the store)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.contextmanager
def threaded(factory: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> Iterator[Any]:
    """Enter ``factory()`` on a fresh loop in a daemon thread; yield what it yields; exit it on teardown."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with factory() as value:
                box["value"] = value
                ready.set()
                await stop.wait()
        except BaseException as e:
            box["error"] = e
            ready.set()

    ready = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    try:
        yield box["value"], loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    logs: list[str] = []
    sink = logger.add(lambda m: logs.append(str(m)), level="TRACE", format="{message} | {extra} | {exception}")
    tmp: Path = tmp_path_factory.mktemp("hostile")
    try:
        with threaded(lambda: fleet(tmp, {1: HONEST})) as (f, loop):
            host, port = f.url.removeprefix("http://").split(":")
            yield Running(url=f.url, host=host, port=int(port), key=f.key, ctx=f.ctx, app=f.app, logs=logs, loop=loop)
    finally:
        logger.remove(sink)
