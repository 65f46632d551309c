"""Group commit in the forwarder's sink, and the batch calls it uses, on both outbox backends.

Concurrent requests' payloads share one store transaction, but a sink call
still returns only once its own payload is stored, in the order the sinks
were called; ``put_many``/``ack_many`` behave like the one-at-a-time calls.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest

from api.scoring_outbox import OutboxForwarder
from shared.store.outbox import PUT_GROUP, RedisOutbox
from tests.api.test_outbox import REDIS_URL, make_outbox  # noqa: F401 - the two-backend fixture

UNUSED_URL = "http://127.0.0.1:9"  # the forwarder loop is not started: nothing is delivered here


class CountingOutbox:
    """Counts store transactions of the wrapped outbox."""

    def __init__(self, box) -> None:
        self.box = box
        self.put_calls = 0

    async def store(self, payloads, now):
        self.put_calls += 1
        return await self.box.store(payloads, now)

    def __getattr__(self, name):
        return getattr(self.box, name)


async def test_concurrent_sinks_share_transactions_and_each_returns_stored(make_outbox) -> None:  # noqa: F811
    box = CountingOutbox(make_outbox(max_items=1000))
    fwd = OutboxForwarder(box, None, UNUSED_URL, "hk", rng=random.Random(1))  # type: ignore[arg-type]

    async def settle(i: int) -> int:
        await fwd.sink({"n": i})
        return len(await box.peek(1000))  # what is stored when this caller is told "done"

    seen = await asyncio.gather(*(settle(i) for i in range(50)))
    assert all(n >= i + 1 for i, n in enumerate(seen)), "a sink returned before its payload was stored"
    items = await box.peek(1000)
    assert [it.payload["n"] for it in items] == list(range(50))
    assert box.put_calls < 10, f"{box.put_calls} transactions for 50 concurrent payloads"


async def test_put_many_trims_and_ack_many_removes(make_outbox) -> None:  # noqa: F811
    box = make_outbox(max_items=5)
    assert await box.put_many([{"n": i} for i in range(3)]) == 0
    assert await box.put_many([{"n": i} for i in range(3, 8)]) == 3
    items = await box.peek(10)
    assert [it.payload["n"] for it in items] == [3, 4, 5, 6, 7]
    await box.ack_many([it.id for it in items[:2]])
    await box.ack_many([])
    assert [it.payload["n"] for it in await box.peek(10)] == [5, 6, 7]
    assert await box.dropped() == 3


async def test_ack_many_removes_exactly_the_given_ids_runs_and_gaps_alike(make_outbox) -> None:  # noqa: F811
    box = make_outbox(max_items=100)
    await box.put_many([{"n": i} for i in range(10)])
    items = await box.peek(10)
    await box.ack_many([items[i].id for i in (4, 2, 3)])  # an unbroken run, out of order
    assert [it.payload["n"] for it in await box.peek(10)] == [0, 1, 5, 6, 7, 8, 9]
    await box.ack_many([items[i].id for i in (0, 6, 8)])  # gaps: the rows between stay
    assert [it.payload["n"] for it in await box.peek(10)] == [1, 5, 7, 9]
    await box.ack_many([items[i].id for i in (5, 6, 7)])  # a run holding an id already acknowledged
    assert [it.payload["n"] for it in await box.peek(10)] == [1, 9]


async def test_redis_group_is_one_round_trip_per_put_group_in_order() -> None:
    """On Redis a group commit costs a round trip per ``PUT_GROUP`` payloads, not one per payload
    (which made each group wait for dozens of sequential round trips), and keeps order and the bound."""
    if not REDIS_URL:
        pytest.skip("Redis outbox tests need REDIS_URL (CI sets it; .ci/run)")
    box = RedisOutbox.from_url(REDIS_URL, namespace=f"test-{uuid.uuid4().hex[:8]}", max_items=PUT_GROUP + 20)

    # this client's script calls (the server's commandstats count every client's: the suite's other workers
    # and anyone else on the server moved them)
    sent: list[str] = []
    execute = box.r.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return await execute(*args, **options)

    box.r.execute_command = counted
    try:
        await box.put({"n": -1})  # the script is loaded now, not counted below
        sent.clear()
        n = PUT_GROUP + 50
        assert await box.put_many([{"n": i} for i in range(n)]) == 31  # 1 + n - (PUT_GROUP + 20)
        scripts = [c for c in sent if c in ("EVALSHA", "EVAL")]
        assert len(scripts) == 2, f"not one script call per {PUT_GROUP} of {n} payloads: {sent}"
        items = await box.peek(n)
        assert [it.payload["n"] for it in items] == list(range(30, n))  # -1 and 0..29 were dropped
        assert await box.dropped() == 31
    finally:
        await box.r.delete(box.key, box.dropped_key, box.bytes_key, box.sizes_key, box.full_key, box.recounted_key,
                           box.failed_key)  # every key it writes: the run of drops' too (it was left in Redis)
        await box.close()


def test_a_committer_dropped_with_its_event_loop_leaves_no_unraisable_error(tmp_path) -> None:
    """A forwarder whose group commit was still waiting when its event loop went (a test's teardown; a worker's
    loop closed without the forwarder's stop) was closed by the garbage collector: its ``finally`` committed then,
    on a store already closed, and the failed commit's retry asked for a loop that was gone. Python printed the
    RuntimeError as "Exception ignored in: <coroutine OutboxForwarder._commit_soon>" (seen in CI's run, credited to
    whichever test the collector ran in)."""
    import gc
    import sys

    from shared.store.outbox import SQLiteOutbox

    box = SQLiteOutbox(tmp_path / "outbox.db")
    loop = asyncio.new_event_loop()

    async def queue_one() -> OutboxForwarder:
        fwd = OutboxForwarder(box, None, UNUSED_URL, "hk", rng=random.Random(1))  # type: ignore[arg-type]
        fwd.enqueue({"n": 1})  # its committer now waits GROUP_COMMIT_SECONDS
        return fwd

    fwd = loop.run_until_complete(queue_one())
    loop.run_until_complete(box.close())
    loop.close()  # the committer's task is still pending
    asyncio.set_event_loop(None)  # as an asyncio test's teardown leaves the thread: no loop to be had
    caught: list[object] = []
    hook, sys.unraisablehook = sys.unraisablehook, caught.append
    try:
        del fwd, loop
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not caught, [getattr(c, "exc_value", c) for c in caught]
