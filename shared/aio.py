"""asyncio helpers that behave the same on every Python we support.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives in the same
loop turn as the awaited thing finishing (it returns the result instead of raising;
fixed in 3.12, where ``wait_for`` is built on ``asyncio.timeout``). A background
loop parked in ``wait_for`` then ignores the cancel that shutdown sends it, and the
process hangs on exit. ``asyncio.timeout`` already counts cancellations correctly on
3.11, so waits are written with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set, False after ``timeout`` seconds; a cancel always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``timeout`` seconds (``wait_for`` that obeys
    a cancel)."""
    async with asyncio.timeout(timeout):
        return await awaitable
