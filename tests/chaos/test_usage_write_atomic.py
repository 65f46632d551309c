"""A usage write cut part way through adds nothing: the recorder keeps a failed batch and writes it
again, so a partly applied one would be counted twice (Redis behind a TCP proxy that drops the link
in the middle of the batch)."""

from __future__ import annotations

import os
import urllib.parse
import uuid

import pytest

from shared.store.base import StoreUnavailable, UsageCounts, UsageDelta
from shared.store.redis import RedisStore
from tests.chaos.tcp_proxy import tcp_proxy

REDIS_URL = os.environ.get("REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set: this test needs a Redis (CI sets it)")


async def test_a_flush_cut_mid_write_is_written_exactly_once() -> None:
    assert REDIS_URL
    url = urllib.parse.urlparse(REDIS_URL)
    namespace = f"usage-cut-{uuid.uuid4().hex[:12]}"
    direct = RedisStore.from_url(REDIS_URL, namespace=namespace)
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        proxied = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}", namespace=namespace)
        try:
            _, rec = await direct.create_key(10)
            days = 1500  # one row per (key, day): a batch of ~300 kB, cut at 100 kB
            deltas = [UsageDelta(key_id=rec.id, day=f"day-{i:05d}", counts=UsageCounts(requests=1, prompt_tokens=2),
                                 last_used_at=1.0) for i in range(days)]
            await proxied.ping()  # connected, scripts and handshake done: the budget is the batch's
            proxy.cut_after(100_000)
            with pytest.raises(StoreUnavailable):
                await proxied.add_usage(deltas)
            assert (await direct.usage(rec.id)).totals.requests == 0, "a cut write left part of the batch"
            await proxied.add_usage(deltas)  # the retry, on a new connection: the whole batch, once
            assert (await direct.usage(rec.id)).totals.requests == days
        finally:
            await proxied.close()
            async for key in direct.redis.scan_iter(match=f"{namespace}*"):
                await direct.redis.delete(key)
            await direct.close()
