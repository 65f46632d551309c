"""Bytes a process holds at once for requests, across all of them: past a bound, a request is refused.

Two budgets use it: the bodies read before their signature is checked (``shared.signing``'s
``RequestVerifier``, ``MAX_UNVERIFIED_BODY_BYTES``) and the media a miner fetches for its callers
(``neurons.miner.media_urls``, ``MEDIA_BYTES_IN_FLIGHT``). Without one, each request's own cap bounds nothing:
60 held 8 MB bodies took a miner from 91 MB to 804 MB.
"""

from __future__ import annotations

import asyncio

from shared.aio import wait_event


class ByteBudget:
    """Bytes held at once, in one process: ``take`` before holding them, ``give`` them back once let go.

    One taker always fits when nothing else is held, so a budget below one request's size still lets every
    size through (one at a time)."""

    def __init__(self, capacity: int, *, wait: float = 0.0) -> None:
        self.capacity = capacity
        self.wait = wait  # how long ``take`` waits for room before it says none came
        self.in_flight = 0
        self.peak = 0  # the most ever in flight (tests, diagnostics)
        self._freed: asyncio.Event | None = None  # set when bytes are given back (made by the first waiter)

    def _fits(self, size: int) -> bool:
        return not self.in_flight or self.in_flight + size <= self.capacity

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes of room if there is room now; False: there is not (nothing taken)."""
        if not self._fits(size):
            return False
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)
        return True

    async def take(self, size: int) -> bool:
        """Take ``size`` bytes of room, waiting up to ``wait`` seconds for it; False: none came."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.wait
        while not self.try_take(size):
            if self._freed is None:
                self._freed = asyncio.Event()
            # not asyncio.wait_for: on 3.11 it swallows a cancel that lands in the turn room came (the request,
            # its caller gone, took the room and went on)
            if not await wait_event(self._freed, max(0.0, until - loop.time())):
                return False
        return True

    def give(self, size: int) -> None:
        self.in_flight -= size
        if self._freed is not None:  # every waiter looks again; those that still do not fit wait anew
            self._freed.set()
            self._freed = None
