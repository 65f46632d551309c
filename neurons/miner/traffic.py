"""The miner's request log: a line per request at DEBUG, a summary a minute at INFO.

A miner answers every validator's traffic; a loguru line per request cost it
about a tenth of its CPU under load (more than the sr25519 check). Operators
still see their traffic at INFO, as one line a minute, and each request at
``LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator

from aiohttp import web
from loguru import logger

SUMMARY_SECONDS = 60.0
CLIENT_GONE = 499  # the status logged for a caller that left first (nginx's word for it)
MAX_SAMPLES = 10_000  # latencies kept per interval for the median: bounded memory under any load


class TrafficLog:
    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.requests = 0
        self.failed = 0
        self.left = 0  # the caller went away first (a race another miner won, a deadline): no failure
        self.callers: set[str] = set()
        self.latencies_ms: list[float] = []

    def record(self, *, rid: str, caller: str, stream: bool, status: int, latency_ms: float) -> None:
        logger.debug("chat rid={} caller={} stream={} status={} latency_ms={:.1f}",
                     rid, caller[:10], stream, status, latency_ms)
        self.requests += 1
        self.left += status == CLIENT_GONE
        self.failed += status >= 400 and status != CLIENT_GONE
        if len(self.callers) < 1000:
            self.callers.add(caller)
        if len(self.latencies_ms) < MAX_SAMPLES:
            self.latencies_ms.append(latency_ms)

    def summary(self, seconds: float) -> str | None:
        """The interval's line (None when there was no traffic); starts the next interval."""
        if not self.requests:
            return None
        p50 = statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
        line = (f"served {self.requests} chat requests in the last {seconds:.0f}s "
                f"({self.failed} failed, {self.left} left by the caller first) from {len(self.callers)} caller(s), "
                f"p50 latency {p50:.1f} ms")
        self._reset()
        return line


TRAFFIC = web.AppKey("traffic", TrafficLog)


async def summary_loop(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: log the summary every ``SUMMARY_SECONDS`` while the app runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(SUMMARY_SECONDS)
            line = app[TRAFFIC].summary(SUMMARY_SECONDS)
            if line:
                logger.info(line)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
