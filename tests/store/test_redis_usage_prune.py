"""Redis drops a key's old usage days once each time the oldest day kept moves, not once per day written.

The mark was the day written: a flush holding many days (a backlog, an import) scanned the key's whole
usage hash once per day in it, so 1,500 days took seconds inside one transaction, past the client's
socket timeout, and a flush that Redis applied but whose reply timed out was retried and counted twice."""

from __future__ import annotations

import time
import uuid

from shared.store.base import UsageCounts, UsageDelta, usage_day
from shared.store.redis import RedisStore
from tests.store.conftest import drop_namespace, redis_url

T0 = float(int(time.time()))


async def test_old_days_are_dropped_when_the_oldest_day_kept_moves_and_not_at_each_day_written() -> None:
    store = RedisStore.from_url(redis_url(), namespace=f"prune-{uuid.uuid4().hex[:12]}")
    try:
        _, rec = await store.create_key(5)
        await store.add_usage([UsageDelta(rec.id, usage_day(T0), UsageCounts(requests=1), T0)])
        usage_key = store.key("usage", rec.id)
        await store.redis.hset(usage_key, "2000-01-01:requests", 1)  # older than any day kept
        many = [UsageDelta(rec.id, f"2090-{m:02d}-{d:02d}", UsageCounts(requests=1), T0)
                for m in range(1, 13) for d in range(1, 29)]
        await store.add_usage(many)
        assert await store.redis.hexists(usage_key, "2000-01-01:requests"), \
            "the same oldest day kept: the hash was scanned again"
        await store.add_usage([UsageDelta(rec.id, usage_day(T0 + 86400), UsageCounts(requests=1), T0 + 86400)])
        assert not await store.redis.hexists(usage_key, "2000-01-01:requests"), "the next day drops it"
        report = await store.usage(rec.id)
        assert report.totals.requests == 2 + len(many)
        assert usage_day(T0) in report.days and len(report.days) == 2 + len(many)
    finally:
        await drop_namespace(store)
        await store.close()
