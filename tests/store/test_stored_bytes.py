"""A key's daily count of bytes written to storage (``add_stored_bytes``), the same on both stores: refused
whole past a limit, forced with none, per day, beside the usage counts (which it leaves as they were), and
never counted for a deleted key (nor its usage row made again)."""

from __future__ import annotations

from shared.store.base import Store, StoredBytes, UsageCounts, UsageDelta

DAY, NEXT = "2026-12-06", "2026-12-07"


async def test_bytes_are_counted_until_a_write_would_pass_the_limit(store: Store) -> None:
    _, rec = await store.create_key(10)
    assert await store.add_stored_bytes(rec.id, DAY, 600, limit=1000) == StoredBytes(True, 600)
    assert await store.add_stored_bytes(rec.id, DAY, 401, limit=1000) == StoredBytes(False, 600)  # nothing added
    assert await store.add_stored_bytes(rec.id, DAY, 400, limit=1000) == StoredBytes(True, 1000)
    assert await store.add_stored_bytes(rec.id, DAY, 50, limit=0) == StoredBytes(True, 1050)  # no limit: forced
    assert await store.add_stored_bytes(rec.id, NEXT, 900, limit=1000) == StoredBytes(True, 900)  # a new day
    assert await store.day_stored_bytes(rec.id, DAY) == 1050
    await store.add_usage([UsageDelta(rec.id, DAY, UsageCounts(requests=2, prompt_tokens=5), last_used_at=1.0)])
    report = await store.usage(rec.id)
    assert report.days[DAY] == UsageCounts(requests=2, prompt_tokens=5) and report.totals.tokens == 5
    assert report.stored_bytes == {DAY: 1050, NEXT: 900}  # read with the counts (``/v1/usage``: one store call)
    assert (await store.usage(rec.id, since_day=NEXT)).stored_bytes == {NEXT: 900}
    assert await store.day_tokens(rec.id, DAY) == 5


async def test_a_deleted_keys_bytes_are_not_counted(store: Store) -> None:
    _, rec = await store.create_key(10)
    await store.add_stored_bytes(rec.id, DAY, 10, limit=100)
    assert await store.delete_key(rec.id)
    assert await store.add_stored_bytes(rec.id, DAY, 10, limit=100) == StoredBytes(True, 0)
    assert await store.day_stored_bytes(rec.id, DAY) == 0


async def test_bytes_given_back_take_the_day_down_to_zero_at_most(store: Store) -> None:
    """A write refused or failed after its bytes were counted gives them back (a negative size): the day never
    reads below 0, nor does a day with no count yet get a negative one."""
    _, rec = await store.create_key(10)
    await store.add_stored_bytes(rec.id, DAY, 600, limit=1000)
    assert await store.add_stored_bytes(rec.id, DAY, -200, limit=0) == StoredBytes(True, 400)
    assert await store.add_stored_bytes(rec.id, DAY, -1000, limit=0) == StoredBytes(True, 0)
    assert await store.add_stored_bytes(rec.id, NEXT, -50, limit=0) == StoredBytes(True, 0)
    assert await store.add_stored_bytes(rec.id, DAY, 1000, limit=1000) == StoredBytes(True, 1000)  # room again


async def test_a_day_with_stored_bytes_and_no_counted_use_is_no_usage_day(store: Store) -> None:
    """``GET /v1/usage``'s ``days`` lists the days the key was used (counted requests), the same on both stores:
    a day with stored bytes only (a response stored just after midnight, its request counted the day before;
    or stored before the usage flush) was an all-zero day on SQLite, whose bytes share the day's row, and no day
    on Redis."""
    _, rec = await store.create_key(10)
    await store.add_usage([UsageDelta(rec.id, DAY, UsageCounts(requests=1, completion_tokens=3), last_used_at=1.0)])
    await store.add_stored_bytes(rec.id, DAY, 100, limit=0)
    await store.add_stored_bytes(rec.id, NEXT, 200, limit=0)
    report = await store.usage(rec.id)
    assert report.days == {DAY: UsageCounts(requests=1, completion_tokens=3)}
    assert report.stored_bytes == {DAY: 100, NEXT: 200}, "the bytes are still reported, by day"
    assert (await store.usage(rec.id, since_day=NEXT)).days == {}
    await store.add_usage([UsageDelta(rec.id, NEXT, UsageCounts(requests=1), last_used_at=2.0)])
    assert list((await store.usage(rec.id)).days) == [DAY, NEXT], "used on it now"
