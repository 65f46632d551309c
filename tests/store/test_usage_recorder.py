"""The usage buffer: batches per flush, keeps counts while the store is down, merges unflushed counts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.store.redis import RedisStore
from shared.store.sqlite import SQLiteStore
from shared.store.usage import UsageRecorder
from tests.ports import free_port
from tests.store.conftest import SlowWriteStore


class CountingStore(SQLiteStore):
    """A real SQLite store that counts add_usage calls (one per flush, whatever the traffic)."""

    batches = 0

    async def add_usage(self, deltas):  # type: ignore[no-untyped-def]
        self.batches += 1
        await super().add_usage(deltas)


async def test_one_batch_per_flush_and_nothing_lost_while_the_store_is_down(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store)
    for status in (200, 200, 429, 500):
        usage.count_response(rec.id, status)
    usage.record(rec.id, prompt_tokens=7, completion_tokens=11)
    usage.record(rec.id, prompt_tokens="lots", completion_tokens=-5, error=True)  # junk from a miner: ignored
    assert (await usage.report(rec.id)).totals.requests == 4  # unflushed counts are reported
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="gone")
    usage.store = dead
    assert await usage.flush() == 0  # store down: kept for the next try
    usage.count_response(rec.id, 200)
    usage.store = store
    assert await usage.flush() == 1 and store.batches == 1
    totals = (await store.usage(rec.id)).totals.as_dict()
    assert totals == {"requests": 5, "prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18,
                      "errors": 2, "rate_limited": 1}
    assert await usage.flush() == 0 and (await store.usage(rec.id)).totals.requests == 5  # nothing twice
    await dead.close()
    await store.close()


async def test_tokens_in_a_flush_still_count_while_it_is_written(tmp_path: Path) -> None:
    """A key's daily budget reads stored + unflushed tokens: the batch being written is neither
    until it lands, and the spent budget reopened for that moment."""
    store = SlowWriteStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store)
    usage.record(rec.id, prompt_tokens=40, completion_tokens=60)
    flush = asyncio.create_task(usage.flush())
    await asyncio.wait_for(store.writing.wait(), 5)
    assert await usage.tokens_today(rec.id) == 100
    assert (await usage.report(rec.id)).totals.tokens == 100
    store.go.set()
    assert await flush == 1
    assert await usage.tokens_today(rec.id) == 100  # now from the store, and not twice
    await store.close()


async def test_counts_the_store_refuses_at_shutdown_are_said_to_be_lost(tmp_path: Path) -> None:
    """The store down for a while: its run of failed flushes is a line a minute, so the last flush at
    shutdown, which fails too, said nothing, and the lines before it said the counts were kept."""
    from loguru import logger

    store = SQLiteStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store)
    usage.store = dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="gone")
    said: list[str] = []
    sink = logger.add(lambda m: said.append(f"{m.record['level'].name} {m.record['message']}"), level="WARNING")
    try:
        usage.count_response(rec.id, 200)
        assert await usage.flush() == 0  # the run's first failure: told
        usage.count_response(rec.id, 200)
        await usage.last_flush()
    finally:
        logger.remove(sink)
    assert len(said) == 2 and said[1] == ("ERROR usage: 1 row(s) of counts not stored at shutdown, lost: the store "
                                          "did not take them"), said
    await dead.close()
    await store.close()


async def test_a_requests_model_is_counted_in_the_same_batch_and_shown_before_it_is_written(tmp_path: Path) -> None:
    """The model reaches the store with the day's counts, in the one ``add_usage`` a flush makes (no store call
    per request), and a report shows it at once; no model is ``unknown`` (as the answer's ``model`` says), and a
    string no model may be named is counted under ``other``."""
    from shared.store.usage_models import OTHER, UNKNOWN

    store = CountingStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    usage = UsageRecorder(store)
    for model, prompt, completion in (("alpha", 3, 4), ("alpha", 1, 1), ("beta", 5, 0), (None, 2, 2),
                                      ("bad\nname", 1, 0), ("x" * 300, 0, 1)):
        usage.count_response(rec.id, 200)
        usage.record(rec.id, prompt_tokens=prompt, completion_tokens=completion, model=model)
    expected = {"alpha": (2, 4, 5), "beta": (1, 5, 0), UNKNOWN: (1, 2, 2), OTHER: (2, 1, 1)}
    (unflushed,) = (await usage.report(rec.id)).days.values()
    assert {m: (r.requests, r.prompt_tokens, r.completion_tokens) for m, r in unflushed.models.items()} == expected
    assert await usage.flush() == 1 and store.batches == 1
    (stored,) = (await store.usage(rec.id)).days.values()
    assert {m: (r.requests, r.prompt_tokens, r.completion_tokens) for m, r in stored.models.items()} == expected
    assert stored.tokens == 20 == sum(r.tokens for r in stored.models.values())
    await store.close()


async def test_a_workers_unflushed_names_past_the_cap_are_shown_under_other_as_the_store_will_count_them(
        tmp_path: Path) -> None:
    from shared.store.usage_models import MODELS_PER_DAY, OTHER

    store = SQLiteStore(tmp_path / "u.db")
    _, rec = await store.create_key(10)
    other_worker, usage = UsageRecorder(store), UsageRecorder(store)
    for i in range(MODELS_PER_DAY - 1):
        other_worker.record(rec.id, prompt_tokens=1, model=f"stored-{i}")
    await other_worker.flush()
    for i in range(3):
        usage.record(rec.id, completion_tokens=1, model=f"mine-{i}")
    shown = {m: r.tokens for m, r in next(iter((await usage.report(rec.id)).days.values())).models.items()}
    assert len(shown) == MODELS_PER_DAY + 1 and shown["mine-0"] == 1 and shown[OTHER] == 2
    await usage.flush()
    stored = {m: r.tokens for m, r in next(iter((await store.usage(rec.id)).days.values())).models.items()}
    assert stored == shown
    await store.close()
