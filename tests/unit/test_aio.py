"""``shared.aio``: waits with a timeout that never swallow a cancel (3.11's ``wait_for`` does)."""

from __future__ import annotations

import asyncio

import pytest

from shared.aio import describe_tasks, wait_event, within


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


async def test_describe_tasks_follows_each_await_chain_and_bounds_the_list() -> None:
    async def inner() -> None:
        await asyncio.sleep(30)

    async def outer() -> None:
        await inner()

    tasks = [asyncio.create_task(outer(), name=f"t{i}") for i in range(3)]
    await asyncio.sleep(0)
    try:
        text = describe_tasks()
        assert "t0: outer (test_aio.py:" in text and "-> inner (test_aio.py:" in text
        assert "-> sleep (tasks.py:" in text  # down to where it really waits
        assert describe_tasks(most=2).endswith("and 1 more")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
