"""``shared.aio``: waits with a timeout that never swallow a cancel (3.11's ``wait_for`` does)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from shared.aio import describe_tasks, obeying_cancel, wait_event, within


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


async def _swallowing(future: asyncio.Future[int]) -> int:
    """What redis-py does with each command it writes: ``asyncio.wait_for`` around it (3.11's swallows a cancel
    that lands in the turn the awaited thing finished)."""
    return await asyncio.wait_for(future, 30.0)


async def test_a_cancel_swallowed_inside_is_raised_by_obeying_cancel() -> None:
    loop = asyncio.get_running_loop()
    plain_done, kept_done = loop.create_future(), loop.create_future()
    plain = asyncio.create_task(_swallowing(plain_done))
    kept = asyncio.create_task(obeying_cancel(_swallowing(kept_done)))
    await asyncio.sleep(0.01)  # both parked in wait_for
    plain_done.set_result(1)
    kept_done.set_result(1)
    plain.cancel()
    kept.cancel()
    await asyncio.wait({plain, kept}, timeout=2.0)
    if sys.version_info < (3, 12):
        assert plain.result() == 1, "3.11's wait_for returns the result: the cancel is lost"
    assert kept.cancelled(), "the cancel the inner wait swallowed must come out"


async def test_a_swallowed_cancel_beats_the_error_that_followed_it() -> None:
    """A store's error after a swallowed cancel would be caught as a failed pass, and the loop go on."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def swallowed_then_failed() -> int:
        await _swallowing(future)
        raise ConnectionError("the link went with the cancel")

    task = asyncio.create_task(obeying_cancel(swallowed_then_failed()))
    await asyncio.sleep(0.01)
    future.set_result(1)
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert task.cancelled()


async def test_cleanup_after_a_cancel_is_not_cancelled_again() -> None:
    """In a ``finally`` after its cancel a task still counts it; the awaits of its cleanup must run."""
    cleaned: list[int] = []

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(await obeying_cancel(asyncio.sleep(0, result=1)))
            cleaned.append(await obeying_cancel(asyncio.sleep(0.01, result=2)))

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert task.cancelled() and cleaned == [1, 2]


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


async def test_describe_follows_an_await_chain_into_the_async_generator_it_iterates() -> None:
    """A task in ``async for`` over a stream waits in the generator's step object, which names no frame: its
    chain ended at the loop, short of where the stream was stuck (a hung test's fixture ``yield`` too)."""
    async def chunks() -> AsyncIterator[int]:
        yield 1
        await asyncio.Event().wait()  # the stream stalls
        yield 2

    async def reading() -> None:
        async for _ in chunks():
            pass

    task = asyncio.create_task(reading(), name="reader")
    await asyncio.sleep(0.01)
    try:
        text = describe_tasks()
        assert "reader: reading (test_aio.py:" in text and "-> chunks (test_aio.py:" in text, text
        assert text.endswith("-> wait (locks.py:213)") or "-> wait (locks.py:" in text, text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
