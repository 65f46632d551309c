"""Authorizations made in one event-loop turn are sent together (SQLite: one write transaction;
Redis: one pipeline), and each still gets its own exact decision, in arrival order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.store.base import Store, hash_key
from shared.store.sqlite import SQLiteStore


async def test_every_backend_decides_each_request_of_a_turn_exactly_and_in_order(store: Store) -> None:
    key, _ = await store.create_key(5)
    results = await asyncio.gather(*(store.authorize(hash_key(key), scope="chat") for _ in range(8)),
                                   store.authorize(hash_key("sn1-not-a-key"), scope="chat"),
                                   store.authorize(hash_key(key), scope="no-such-scope"))
    assert [r.decision.allowed for r in results[:8]] == [True] * 5 + [False] * 3
    assert [r.decision.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert all(r.decision.retry_after > 0 for r in results[5:8])
    assert results[8].status == "unknown" and results[9].status == "scope"


async def test_one_turn_of_calls_is_one_transaction_with_exact_ordered_decisions(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    try:
        key, _ = await store.create_key(5)
        other, _ = await store.create_key(100)
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        results = await asyncio.gather(*(store.authorize(hash_key(key), scope="chat") for _ in range(8)),
                                       store.authorize(hash_key(other), scope="chat"),
                                       store.authorize(hash_key("sn1-not-a-key"), scope="chat"))
        store.db.set_trace_callback(None)
        mine = results[:8]
        assert [r.decision.allowed for r in mine] == [True] * 5 + [False] * 3
        assert [r.decision.remaining for r in mine[:5]] == [4, 3, 2, 1, 0]
        assert results[8].decision.allowed and results[8].decision.remaining == 99
        assert results[9].status == "unknown" and results[9].decision is None
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert sum(s.startswith("SELECT id,") for s in statements) == 3, "one lookup per distinct key"
        writes = [s for s in statements if s.startswith("INSERT INTO rate_windows")]
        assert len(writes) == 2, "one write per charged key, not per request"
    finally:
        await store.close()


async def test_a_caller_that_is_cancelled_before_the_turn_ends_is_not_charged(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    try:
        key, _ = await store.create_key(2)
        gone = asyncio.ensure_future(store.authorize(hash_key(key), scope="chat"))
        await asyncio.sleep(0)  # it has queued itself
        gone.cancel()
        kept = await asyncio.gather(*(store.authorize(hash_key(key), scope="chat") for _ in range(2)))
        assert [r.decision.allowed for r in kept] == [True, True], "the cancelled call took no slot"
    finally:
        await store.close()


async def test_callers_of_a_turn_are_answered_even_when_the_first_one_is_cancelled(store: Store) -> None:
    key, _ = await store.create_key(3)
    first = asyncio.ensure_future(store.authorize(hash_key(key), scope="chat"))
    rest = [asyncio.ensure_future(store.authorize(hash_key(key), scope="chat")) for _ in range(3)]
    await asyncio.sleep(0)  # all four have queued in this turn
    first.cancel()
    done = await asyncio.wait_for(asyncio.gather(*rest), timeout=5)
    assert [r.decision.allowed for r in done] == [True, True, True], "the cancelled call took no slot"
