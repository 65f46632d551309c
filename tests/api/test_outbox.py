"""The scoring outbox, both backends held to one suite: order, bound, lease, durability."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.store.outbox import Outbox, Pace, RedisOutbox, SQLiteOutbox

REDIS_URL = os.environ.get("REDIS_URL")


@pytest.fixture(params=["sqlite", "redis"])
async def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    created: list[Outbox] = []
    namespace = f"test-{uuid.uuid4().hex[:8]}"

    def factory(max_items: int = 100, max_bytes: int = 1 << 20) -> Outbox:
        if request.param == "sqlite":
            box: Outbox = SQLiteOutbox(tmp_path / "api.db", max_items=max_items, max_bytes=max_bytes)
        else:
            if not REDIS_URL:
                pytest.skip("Redis outbox tests need REDIS_URL (CI sets it; .ci/run)")
            box = RedisOutbox.from_url(REDIS_URL, namespace=namespace, max_items=max_items, max_bytes=max_bytes)
        created.append(box)
        return box

    yield factory
    if request.param == "redis" and created:
        r = created[0].r  # type: ignore[attr-defined]
        keys = [k async for k in r.scan_iter(match=f"{namespace}:*")]
        if keys:
            await r.delete(*keys)
    for box in created:
        await box.close()


async def test_fifo_and_ack(make_outbox) -> None:
    box = make_outbox()
    for i in range(5):
        assert await box.put({"n": i}) == 0
    items = await box.peek(3)
    assert [it.payload["n"] for it in items] == [0, 1, 2]
    await box.ack(items[0].id)
    assert [it.payload["n"] for it in await box.peek(10)] == [1, 2, 3, 4]
    assert await box.depth() == 4


async def test_full_outbox_drops_oldest_and_counts(make_outbox) -> None:
    box = make_outbox(max_items=3)
    dropped = [await box.put({"n": i}) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [it.payload["n"] for it in await box.peek(10)] == [2, 3, 4]
    assert await box.dropped() == 2


async def test_a_group_commit_on_sqlite_is_its_rows_and_two_statements_of_bookkeeping(tmp_path: Path) -> None:
    """Every request's payload goes through a group commit: besides its rows, one write (the bytes held) and one read
    (the id span, the drops, a run of drops), where it made five statements (the bytes written then read back, the
    span, the drops, the run); what it answers is the same."""
    box = SQLiteOutbox(tmp_path / "api.db", max_items=100)
    await box.put_many([{"n": 0}])
    statements: list[str] = []
    box._db.set_trace_callback(statements.append)
    stored = await box.store([{"n": 1}, {"n": 2}, {"n": 3}], 1.0)
    box._db.set_trace_callback(None)
    rows = [s for s in statements if s.startswith("INSERT")]
    bookkeeping = [s for s in statements if s not in rows and s not in ("BEGIN IMMEDIATE", "COMMIT")]
    assert len(rows) == 6 and len(bookkeeping) == 2, statements
    assert (stored.dropped, stored.total, stored.run) == (0, 0, "")
    assert [it.payload["n"] for it in await box.peek(10)] == [0, 1, 2, 3]
    await box.close()


async def test_an_outbox_full_by_size_drops_the_oldest_and_counts(make_outbox) -> None:
    """Bounded by count alone, a validator outage kept 10,000 payloads of long answers: GBs, in Redis its memory,
    and a Redis full under noeviction refused the API's every write (each request a 503). Past
    ``OUTBOX_MAX_BYTES`` the oldest go, counted; what is delivered frees its room; one payload larger than the
    bound alone is kept."""
    box = make_outbox(max_items=100, max_bytes=10_000)
    pad = "x" * 3000  # ~3,020 characters a payload: three fit, four do not
    assert await box.put_many([{"n": i, "pad": pad} for i in range(3)]) == 0
    assert await box.put({"n": 3, "pad": pad}) == 1
    assert [i.payload["n"] for i in await box.peek(10)] == [1, 2, 3]
    await box.ack_many([i.id for i in await box.peek(2)])
    assert await box.put_many([{"n": i, "pad": pad} for i in (4, 5)]) == 0, "what was delivered left its room"
    assert [i.payload["n"] for i in await box.peek(10)] == [3, 4, 5]
    assert await box.put({"n": 6, "pad": "y" * 20_000}) == 3
    assert [i.payload["n"] for i in await box.peek(10)] == [6] and await box.dropped() == 4
    await box.ack((await box.peek(1))[0].id)
    assert await box.put_many([{"n": i, "pad": pad} for i in (7, 8, 9)]) == 0 and await box.depth() == 3


async def _ack_as_an_older_api(box: Outbox, item_ids: list[str]) -> None:
    """Delete delivered payloads as an API of an older version on the same store does: on Redis an XDEL alone
    (before the byte bound), in SQLite the rows and their sizes without the running total (before it)."""
    if isinstance(box, RedisOutbox):
        await box.r.xdel(box.key, *item_ids)
        return
    marks = ",".join("?" * len(item_ids))
    box._tx(lambda db: (db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", item_ids),
                        db.execute(f"DELETE FROM outbox_size WHERE id IN ({marks})", item_ids)))


async def test_payloads_an_older_api_delivered_leave_their_room(make_outbox) -> None:
    """A fleet mixing versions on one store: an older API holding the lease deletes what it delivered without
    releasing its bytes, so the count of bytes held only grew; past ``OUTBOX_MAX_BYTES`` every commit dropped
    every payload but the newest, never scored, and went on after the fleet was upgraded. Over the bound, the
    bytes held are counted again from what is still there (once a minute at most)."""
    box = make_outbox(max_items=100, max_bytes=10_000)
    pad = "x" * 3000
    await box.put_many([{"n": i, "pad": pad} for i in range(3)])
    await _ack_as_an_older_api(box, [i.id for i in await box.peek(10)])  # ~9 kB never released
    assert await box.put_many([{"n": i, "pad": pad} for i in range(3)]) == 0, "the room is there"
    assert await box.depth() == 3 and await box.dropped() == 0
    assert await box.put({"n": 3, "pad": pad}) == 1, "and the bound still holds"


async def test_a_gap_left_by_an_ack_out_of_order_drops_nothing(make_outbox) -> None:
    """The SQLite outbox bounds its count by the id span; a hole in the span must not look full."""
    box = make_outbox(max_items=3)
    for i in range(3):
        await box.put({"n": i})
    middle = (await box.peek(3))[1]
    await box.ack(middle.id)
    assert await box.put({"n": 3}) == 0  # 3 payloads, span of 4 ids: nothing is over the limit
    assert [it.payload["n"] for it in await box.peek(10)] == [0, 2, 3]
    assert await box.put({"n": 4}) == 1
    assert [it.payload["n"] for it in await box.peek(10)] == [2, 3, 4]
    assert await box.dropped() == 1


async def test_payloads_survive_a_new_instance(make_outbox) -> None:
    first = make_outbox()
    await first.put({"n": 1})
    second = make_outbox()  # a restarted API process opens the same store
    assert [it.payload for it in await second.peek(10)] == [{"n": 1}]


async def test_lease_is_exclusive_and_renewable(make_outbox) -> None:
    a, b = make_outbox(), make_outbox()
    assert await a.acquire_lease("worker-a", 5)
    assert not await b.acquire_lease("worker-b", 5)
    assert await a.acquire_lease("worker-a", 5)  # renewal
    await a.release_lease("worker-a")
    assert await b.acquire_lease("worker-b", 5)


async def test_a_lease_dated_before_the_clock_stepped_back_is_taken_over(tmp_path: Path, wall_step) -> None:
    """SQLite's lease ends at a wall-clock time its workers share: its holder killed just after NTP stepped the
    host's clock back an hour, no worker delivered a payload for that hour. (Redis's lease is a TTL on Redis's
    clock, which a step of the API host's leaves alone.)"""
    a, b = SQLiteOutbox(tmp_path / "api.db"), SQLiteOutbox(tmp_path / "api.db")
    try:
        assert await a.acquire_lease("killed-worker", 10)
        wall_step(-5)  # a step within twice the lease: still the holder's
        assert not await b.acquire_lease("new-worker", 10)
        wall_step(-3600)
        assert await b.acquire_lease("new-worker", 10), "an hour's step back: taken over at once"
        assert not await a.acquire_lease("killed-worker", 10), "and held by its new holder"
    finally:
        await a.close()
        await b.close()


async def test_expired_lease_is_taken_over(make_outbox) -> None:
    import asyncio

    a, b = make_outbox(), make_outbox()
    assert await a.acquire_lease("dead-worker", 0.2)
    await asyncio.sleep(0.35)
    assert await b.acquire_lease("new-worker", 5)


async def test_a_delivered_backlog_gives_its_space_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validator away for a while left up to OUTBOX_MAX_ITEMS payloads queued; once delivered, the file kept
    their size for good (an API storing no responses has no purge to give it back): its acks do, bounded."""
    from shared.store import sqlite_tables

    monkeypatch.setattr(sqlite_tables, "RECLAIM_AGAIN_S", 0.0)  # each ack reclaims
    path = tmp_path / "api.db"
    box = SQLiteOutbox(path, max_items=1000)

    def on_disk() -> int:
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return path.stat().st_size

    try:
        await box.put_many([{"prompt": "x" * 10_000, "n": i} for i in range(800)])
        backlog = on_disk()
        assert backlog > 7 << 20
        while items := await box.peek(50):
            await box.ack_many([item.id for item in items])
        assert await box.depth() == 0
        for _ in range(20):  # the next deliveries, as traffic goes on
            await box.put({"prompt": "y", "n": 0})
            await box.ack_many([item.id for item in await box.peek(1)])
        assert on_disk() < 2 << 20
    finally:
        await box.close()


async def test_the_delivery_outage_every_worker_shares_begins_once_and_ends_once(make_outbox) -> None:
    """Two workers on one store: the first failure begins the run (its WARNING), later ones only count; of two
    workers ending it at once, one gets its start and failures (its INFO line), the other nothing."""
    first, second = make_outbox(), make_outbox()
    assert await first.outage_ended() is None, "no run on: nothing to end"
    assert await first.outage_failed(1000.5) is True
    assert await second.outage_failed(2000.0) is False
    assert await first.outage_failed(3000.0) is False
    ended = await asyncio.gather(first.outage_ended(), second.outage_ended())
    assert sorted(ended, key=lambda e: e is not None) == [None, (1000.5, 3)]
    assert await second.outage_failed(4000.0) is True, "the next outage is a run of its own"


async def test_the_backoff_of_failed_passes_is_the_stores_and_ends_with_the_outage(make_outbox) -> None:
    """The failed delivery passes' backoff is kept beside the outage: a worker goes on with the count another
    left (each worker kept its own, and a new lease holder began again at the base), and a delivery ends it."""
    first, second = make_outbox(), make_outbox()
    pace = Pace(base=0.5, most=60.0, jitter=1.0)
    assert await first.outage_resume_at() == 0.0, "no backoff: post now"
    assert await first.outage_backoff(1000.0, pace) == (1, 1001.0)
    assert await second.outage_resume_at() == 1001.0, "the other worker waits for it too"
    assert await second.outage_backoff(1001.0, pace) == (2, 1003.0), "and goes on with the count"
    for _ in range(10):
        passes, resume = await first.outage_backoff(2000.0, Pace(base=0.5, most=60.0, jitter=0.5))
    assert (passes, resume) == (12, 2030.0), "at most ``most``, jittered"
    await first.outage_failed(1000.0)
    assert await second.outage_ended() == (1000.0, 1)
    assert await first.outage_resume_at() == 0.0 and await first.outage_backoff(3000.0, pace) == (1, 3001.0)
    await second.outage_ended()  # a backoff with no outage (the validator refusing our signature) ends too
    assert await first.outage_resume_at() == 0.0


async def test_the_times_the_validator_failed_on_a_payload_are_the_stores(make_outbox) -> None:
    """Counted in the store, whichever worker posted it; forgotten when the payload goes (delivered, dropped)."""
    first, second = make_outbox(max_items=3), make_outbox(max_items=3)
    for i in range(3):
        await first.put({"n": i})
    head, other, _ = await first.peek(3)
    assert [await first.failed_on(head.id), await second.failed_on(head.id), await second.failed_on(other.id)] == [
        1, 2, 1]
    assert [i.attempts for i in await second.peek(3)] == [2, 1, 0]
    await first.ack_many([other.id])
    await first.put({"n": 3})
    await first.put({"n": 4})  # the head dropped from the full outbox
    assert [(i.payload["n"], i.attempts) for i in await first.peek(3)] == [(2, 0), (3, 0), (4, 0)]
    assert await first.failed_on(head.id) == 0, "a payload gone is not counted"
