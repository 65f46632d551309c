"""``shared.aio``: waits with a timeout that never swallow a cancel (3.11's ``wait_for`` does)."""

from __future__ import annotations

import asyncio

import pytest

from shared.aio import wait_event, within


async def test_wait_event_tells_set_from_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 5.0) is True


async def test_within_returns_the_result_or_times_out() -> None:
    assert await within(asyncio.sleep(0, result=7), 5.0) == 7
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(5), 0.01)


async def test_a_cancel_in_the_same_turn_as_the_wakeup_is_obeyed() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 30.0))
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    bounded = asyncio.create_task(within(future, 30.0))
    await asyncio.sleep(0.01)  # both parked
    event.set()
    future.set_result(1)
    waiter.cancel()
    bounded.cancel()
    await asyncio.wait({waiter, bounded}, timeout=2.0)
    assert waiter.cancelled() and bounded.cancelled()
