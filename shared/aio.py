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
import contextlib
import gc
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True once ``event`` is set, False after ``timeout`` seconds; a cancel always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def stopped(task: asyncio.Task[Any]) -> None:
    """``task`` (a loop that runs while the app serves) cancelled and awaited to its end: a ``cleanup_ctx``'s
    shutdown."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def obeying_cancel(awaitable: Awaitable[T]) -> T:
    """``await awaitable``; a cancel it swallowed is raised here.

    redis-py writes every command through ``asyncio.wait_for``, which on 3.11 swallows a cancel that lands in
    the loop turn the write finished (in ~1 of 7 cancels of a task looping on commands, measured): the
    command's result came back instead, and the task went on as if never cancelled. The scoring forwarder
    on Redis, stopped while it took its lease, then delivered on for good, and whatever awaited its end
    hung. The task's count of cancels asked for (``Task.cancelling``) still tells: grown across the await
    with no CancelledError out of it (a result, or the store's error), the cancel is raised. A count already
    up before the await (cleanup in a ``finally`` after a cancel) raises nothing."""
    task = asyncio.current_task()
    if task is None:
        return await awaitable
    asked = task.cancelling()
    try:
        result = await awaitable
    except asyncio.CancelledError:
        raise
    except BaseException as e:
        if task.cancelling() > asked:
            raise asyncio.CancelledError from e
        raise
    if task.cancelling() > asked:
        raise asyncio.CancelledError
    return result


async def follow_growing(items: list[T], grown: asyncio.Event, finished: Callable[[], bool],
                         start: int = 0) -> AsyncIterator[list[T]]:
    """What is appended to ``items`` (from index ``start``), in groups as it comes, until ``finished()``:
    its writer appends, then sets ``grown``; it sets ``grown`` once more when it finishes. Each group is
    every item that arrived since the last one (one write for a reader relaying them)."""
    index = start
    while True:
        if index < len(items):
            batch = items[index:]
            index += len(batch)
            yield batch
            continue
        if finished():
            return
        grown.clear()
        if index < len(items) or finished():  # appended (or finished) between the check and the clear
            continue
        await grown.wait()


async def retried(call: Callable[[], Awaitable[T]], *, attempts: int, pause: float,
                  on: type[BaseException] | tuple[type[BaseException], ...]) -> T:
    """``call()``, made again after ``pause`` seconds while it raises ``on``, ``attempts`` times in all (the last
    one's exception goes up). Only for what is safe to repeat: a write that may have landed is done twice."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except on:
            if attempt == attempts:
                raise
            await asyncio.sleep(pause)
    raise AssertionError("attempts must be at least 1")


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``timeout`` seconds (``wait_for`` that obeys
    a cancel)."""
    async with asyncio.timeout(timeout):
        return await awaitable


def describe_tasks(most: int = 20) -> str:
    """The running loop's tasks but the caller's (``most`` of them), each with the chain of
    coroutines it waits in, outermost first: what a stuck shutdown is waiting for.
    ``Task.get_stack`` shows only one frame of a suspended coroutine, so the chain is followed
    through ``cr_await``."""
    me = asyncio.current_task()
    return describe([task for task in asyncio.all_tasks() if task is not me], most) or "no other task"


def describe(tasks: list[asyncio.Task[Any]], most: int = 20) -> str:
    """``most`` of ``tasks``, each with the chain of coroutines it waits in (``describe_tasks``)."""
    lines = [f"{task.get_name()}: {' -> '.join(_await_chain(task.get_coro())) or repr(task)}"
             for task in tasks[:most]]
    if len(tasks) > most:
        lines.append(f"and {len(tasks) - most} more")
    return "; ".join(lines)


def _await_chain(awaitable: object) -> list[str]:
    where = []
    for _ in range(64):  # bounded: a chain is a few frames deep
        awaitable = _generator_of(awaitable)
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if frame is None:
            if awaitable is not None and not where:
                where.append(type(awaitable).__name__)
            break
        where.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
    return where


def _generator_of(awaitable: object) -> object:
    """The async generator an ``async for`` step (or ``__anext__``, ``asend``, ``athrow``) awaits, else
    ``awaitable``: the step object names neither its generator nor a frame, so a chain through an ``async for``
    over a stream (or a fixture's ``yield``) ended there, short of the await it was stuck in."""
    if type(awaitable).__name__ not in ("async_generator_asend", "async_generator_athrow"):
        return awaitable
    return next((ref for ref in gc.get_referents(awaitable) if inspect.isasyncgen(ref)), awaitable)
