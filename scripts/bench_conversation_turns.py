"""Store calls and store time per stored turn of a ``conversation``, through the store API, on SQLite and on Redis.

Each turn makes the calls a foreground turn makes (``conversations_state.history``, ``responses_state.last_turn``,
the conversation's ``append``, the response's ``put``), for N turns of 2.5 KB answers (``N``, default 50), each
call counted and timed. Run it from a tree's root (``REDIS_URL`` for the Redis figures; ``REPEAT`` runs each):

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python scripts/bench_conversation_turns.py

It runs the code of the tree it is run from (not the installed one), and takes a tree from before 2026-12-07 too
(whose conversations name no last stored turn): ``cd old-tree && python /path/to/bench_conversation_turns.py``,
alternated with this one, compares the two on one host.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from types import SimpleNamespace
from typing import Any


class Timed:
    """A store whose coroutine calls are counted and timed, by name, into ``spent``."""

    def __init__(self, inner: Any, spent: dict[str, list[float]], label: str) -> None:
        self._inner, self._spent, self._label = inner, spent, label

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(fn):
            return fn

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self._spent[f"{self._label}.{name}"].append(time.perf_counter() - t0)

        return timed


async def one_turn(conversations: Any, responses: Any, cid: str, i: int) -> None:
    """Turn ``i`` of the conversation, stored as a foreground turn is (named when this tree names turns)."""
    from api.conversations_state import _turn
    from api.responses_state import Keeping, item_ids, last_turn
    from shared.store.base import KeyRecord
    from tests.store.test_response_parts import turn

    key = KeyRecord(id="key-bench", key_hash="", prefix="", rate_limit=0)
    ctx: Any = SimpleNamespace(responses=responses)
    named = hasattr(conversations._inner, "turn_items")
    if named:
        from api.last_stored import LastStored

        items, last = await conversations.turn_items(key.id, cid)
        history = await last_turn(ctx, key, items, LastStored.read(last))
    else:
        history = await last_turn(ctx, key, await conversations.items(key.id, cid))
    response, added = turn(i)
    response = response | {"id": f"resp_bench_{i}_{os.urandom(4).hex()}"}
    keeping = Keeping(key, 600, history, added, conversation_id=cid)
    keeping.data = keeping.part(response)
    last_arg = {"last": keeping.named(response)} if named else {}
    await conversations.append(key.id, cid, _turn(added, response), retention=600, max_bytes=None, once=True,
                               fence=response["id"], **last_arg)
    assert await responses.put(key.id, response["id"], keeping.data, retention=600, item_ids=item_ids(added, response))


async def run(kind: str, conversation_store: Any, response_store: Any, n: int) -> None:
    """``n`` turns of a new conversation; per-call and per-turn figures printed."""
    from shared.store.conversations import Conversation

    spent: dict[str, list[float]] = defaultdict(list)
    conversations, responses = Timed(conversation_store, spent, "conv"), Timed(response_store, spent, "resp")
    cid = "conv_" + os.urandom(8).hex()
    await conversation_store.create("key-bench", Conversation(cid, int(time.time()), {}, 0), [], retention=600)
    turns = []
    for i in range(n):
        spent.clear()
        await one_turn(conversations, responses, cid, i)
        turns.append(({name: sum(times) for name, times in spent.items()},
                      {name: len(times) for name, times in spent.items()}))
    print(f"== {kind}: {n} turns; per turn: calls, mean ms (mean ms of the last 10 turns)")
    for name in sorted({name for times, _ in turns for name in times}):
        calls = statistics.mean(counts.get(name, 0) for _, counts in turns)
        ms = statistics.mean(times.get(name, 0) for times, _ in turns) * 1e3
        last_ms = statistics.mean(times.get(name, 0) for times, _ in turns[-10:]) * 1e3
        print(f"  {name:16s} {calls:4.2f}  {ms:7.3f} ({last_ms:7.3f})")
    total = statistics.mean(sum(times.values()) for times, _ in turns) * 1e3
    calls = statistics.mean(sum(counts.values()) for _, counts in turns)
    print(f"  store: {calls:.2f} calls, {total:.3f} ms a turn")


async def main() -> None:
    sys.path.insert(0, os.getcwd())
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # this tree's code
    from shared.store.conversations import RedisConversationStore, SQLiteConversationStore
    from shared.store.responses import RedisResponseStore, SQLiteResponseStore

    n, repeat = int(os.environ.get("N", "50")), int(os.environ.get("REPEAT", "1"))
    with tempfile.TemporaryDirectory() as d:
        conversations, responses = SQLiteConversationStore(f"{d}/bench.db"), SQLiteResponseStore(f"{d}/bench.db")
        for _ in range(repeat):
            await run("sqlite", conversations, responses, n)
        await conversations.aclose()
        await responses.aclose()
    url = os.environ.get("REDIS_URL")
    if not url:
        return
    namespace = "bench-turns-" + os.urandom(4).hex()
    conversations = RedisConversationStore.from_url(url, namespace=namespace)
    responses = RedisResponseStore.from_url(url, namespace=namespace)
    try:
        for _ in range(repeat):
            await run("redis", conversations, responses, n)
    finally:
        async for name in responses.r.scan_iter(match=f"{namespace}:*", count=500):
            await responses.r.delete(name)
        await conversations.aclose()
        await responses.aclose()


if __name__ == "__main__":
    asyncio.run(main())
