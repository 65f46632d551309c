"""The response store (``previous_response_id``'s memory), on SQLite and on Redis alike: a response is
its key's alone, expires after its retention, and SQLite purges expired rows in bounded batches."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from shared.store import forgotten
from shared.store import responses as responses_module
from shared.store.base import StoreUnavailable
from shared.store.responses import (
    EMPTY,
    MAX_STORED_BYTES,
    RedisResponseStore,
    ResponseStore,
    SQLiteResponseStore,
    encode,
    within_bound,
)
from tests.store.conftest import drop_keys, redis_url, swept_marks

RESPONSE = {"id": "resp_1", "object": "response", "output": [{"type": "message", "id": "msg_1"}]}
ITEMS = [{"id": "msg_0", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]


async def test_a_response_is_read_back_by_its_key_only(responses: ResponseStore) -> None:
    await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=60)
    found = await responses.get("key-a", "resp_1")
    assert found is not None and (found.response, found.items) == (RESPONSE, ITEMS)
    assert await responses.get("key-b", "resp_1") is None  # another key: as if unknown
    assert await responses.get("key-a", "resp_2") is None
    assert not await responses.delete("key-b", "resp_1")  # nor can another key delete it
    assert await responses.delete("key-a", "resp_1")
    assert await responses.get("key-a", "resp_1") is None
    assert not await responses.delete("key-a", "resp_1")


async def test_a_deleted_keys_responses_all_go_and_no_others(responses: ResponseStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted key's conversations stayed until they expired (a day by default), unreachable but kept."""
    monkeypatch.setattr(responses_module, "SCAN_BATCH", 2)  # Redis: several batches, and a partial last one
    for i in range(5):
        await responses.put("key-a", f"resp_{i}", encode(RESPONSE, ITEMS), retention=60)
    await responses.put("key-b", "resp_9", encode(RESPONSE, ITEMS), retention=60)
    await responses.put("key-a*", "resp_8", encode(RESPONSE, ITEMS), retention=60)  # a pattern is no wildcard
    assert await responses.forget_key("key-a") == 5
    assert [await responses.get("key-a", f"resp_{i}") for i in range(5)] == [None] * 5
    assert await responses.get("key-b", "resp_9") is not None and await responses.get("key-a*", "resp_8") is not None
    assert await responses.forget_key("key-a") == 0


async def test_a_deleted_keys_late_answers_are_not_kept(responses: ResponseStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer still being made as its key was deleted (on this worker, or on another host sharing the store) was
    stored when it came, for the usual day, though reads are scoped to the key and no key could read it again.
    Once a key is forgotten, its late answers (a response, a background one's settle, its events) keep nothing,
    for ``FORGOTTEN_FOR_S``; another key's are kept as ever."""
    await responses.put("key-a", "resp_0", encode(QUEUED, ITEMS), retention=60, pending=True)  # being answered
    assert await responses.forget_key("key-a") == 1
    assert not await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_1"])
    assert not await responses.put("key-a", "resp_2", encode(QUEUED, ITEMS), retention=60, pending=True)
    assert not await responses.settle("key-a", "resp_0", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_0"])
    await responses.add_events("key-a", "resp_0", [(0, "e0")], retention=60)
    for response_id in ("resp_0", "resp_1", "resp_2"):
        assert await responses.get("key-a", response_id) is None
        assert await responses.events("key-a", response_id, after=-1) == []
    assert await responses.holder("key-a", "msg_0") is None and await responses.holder("key-a", "msg_1") is None
    assert not await responses.is_pending("key-a", "resp_2")
    assert await responses.put("key-b", "resp_1", encode(RESPONSE, ITEMS), retention=60)  # another key: kept
    assert await responses.get("key-b", "resp_1") is not None
    # the mark goes after FORGOTTEN_FOR_S (key ids are never made again): none is kept for good
    monkeypatch.setattr(forgotten, "FORGOTTEN_FOR_S", 0.05)
    await responses.forget_key("key-c")
    await asyncio.sleep(0.1)
    assert await responses.put("key-c", "resp_3", encode(RESPONSE, ITEMS), retention=60)
    if isinstance(responses, SQLiteResponseStore):  # the session sweep drops the marks past their time
        assert await swept_marks(responses.path) == {"key-a"}
    else:
        assert not await responses.r.exists(f"{responses.ns}:response_forgotten:key-c")


async def test_a_response_expires_after_its_retention(responses: ResponseStore) -> None:
    await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=0.05)
    await responses.put("key-a", "resp_2", encode(RESPONSE, ITEMS), retention=60)
    await asyncio.sleep(0.1)
    assert await responses.get("key-a", "resp_1") is None
    assert not await responses.delete("key-a", "resp_1")
    assert await responses.get("key-a", "resp_2") is not None


def test_the_size_bound_counts_utf8_bytes() -> None:
    assert within_bound({"text": "x" * (MAX_STORED_BYTES // 2)}, EMPTY)
    assert not within_bound({"text": "é" * (MAX_STORED_BYTES // 2)}, EMPTY)  # two bytes each


async def test_sqlite_purges_expired_rows_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses_module, "PURGE_BATCH", 3)
    store = SQLiteResponseStore(tmp_path / "r.db")
    try:
        for i in range(7):
            await store.put("key-a", f"old_{i}", "{}", retention=-1)  # already expired
        count = lambda: store._query("SELECT COUNT(*) FROM stored_responses")[0][0]  # noqa: E731
        # the first write purged (itself, already expired): the later ones waited PURGE_EVERY_S
        assert count() == 6
        store._next_purge = 0.0
        await store.put("key-a", "new", encode(RESPONSE, ITEMS), retention=60)
        assert count() == 4  # one batch of 3, no more
        await store.put("key-a", "new2", encode(RESPONSE, ITEMS), retention=60)  # a full batch: purge again
        assert count() == 2
        await store.put("key-a", "new3", encode(RESPONSE, ITEMS), retention=60)  # nothing left: then a pause
        assert count() == 3 and store._next_purge > time.time()
    finally:
        await store.aclose()


async def test_an_item_is_found_in_the_response_that_added_it_by_its_key_only(responses: ResponseStore) -> None:
    """``item_reference``'s lookup: the items a response added name it, for its own key, until it is gone."""
    await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_0", "msg_1"])
    for item_id in ("msg_0", "msg_1"):
        found = await responses.holder("key-a", item_id)
        assert found is not None and found.id == "resp_1" and found.response == RESPONSE
    assert await responses.holder("key-b", "msg_1") is None  # another key's item: as if unknown
    assert await responses.holder("key-a", "msg_9") is None
    # a later response adding the same item takes it (its copy is the newer one)
    await responses.put("key-a", "resp_2", encode(RESPONSE | {"id": "resp_2"}, ITEMS), retention=60, item_ids=["msg_1"])
    assert (await responses.holder("key-a", "msg_1")).id == "resp_2"  # type: ignore[union-attr]
    assert await responses.delete("key-a", "resp_2")
    assert await responses.holder("key-a", "msg_1") is None  # deleted with the response that held it
    assert (await responses.holder("key-a", "msg_0")).id == "resp_1"  # type: ignore[union-attr]
    assert await responses.forget_key("key-a") == 1
    assert await responses.holder("key-a", "msg_0") is None


async def test_an_items_name_expires_with_its_response(responses: ResponseStore) -> None:
    await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=0.05, item_ids=["msg_0"])
    await asyncio.sleep(0.1)
    assert await responses.holder("key-a", "msg_0") is None


async def test_no_items_name_outlives_its_response_or_its_key(responses: ResponseStore) -> None:
    """What is left behind once responses are deleted, forgotten or purged: nothing of theirs (a forgotten key's
    mark, which refuses its late answers, expires on its own: ``test_a_deleted_keys_late_answers_are_not_kept``)."""
    await responses.put("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_0", "msg_1"])
    await responses.put("key-b", "resp_2", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_0"])
    await responses.forget_key("key-a")
    if isinstance(responses, RedisResponseStore):
        names = [n async for n in responses.r.scan_iter(match=f"{responses.ns}:*")]
        assert sorted(n.decode() for n in names) == [f"{responses.ns}:response:key-b:resp_2",
                                                     f"{responses.ns}:response_forgotten:key-a",
                                                     f"{responses.ns}:response_item:key-b:msg_0"]
        return
    assert isinstance(responses, SQLiteResponseStore)
    assert responses._query("SELECT key_id, item_id, response_id FROM stored_response_items") == [
        ("key-b", "msg_0", "resp_2")]
    await responses.delete("key-b", "resp_2")
    assert responses._query("SELECT COUNT(*) FROM stored_response_items") == [(0,)]


async def test_sqlite_purges_the_items_of_expired_responses(tmp_path: Path) -> None:
    store = SQLiteResponseStore(tmp_path / "r.db")
    try:
        await store.put("key-a", "old", encode(RESPONSE, ITEMS), retention=-1, item_ids=["msg_0"])  # purged at once
        await store.put("key-a", "older", encode(RESPONSE, ITEMS), retention=-1, item_ids=["msg_1"])
        store._next_purge = 0.0
        await store.put("key-a", "new", encode(RESPONSE, ITEMS), retention=60, item_ids=["msg_2"])
        assert store._query("SELECT item_id FROM stored_response_items") == [("msg_2",)]
    finally:
        await store.aclose()


QUEUED = {"id": "resp_1", "object": "response", "status": "queued", "background": True, "output": []}


async def test_a_pending_response_is_settled_once(responses: ResponseStore) -> None:
    """A background response: its task and a cancel may both settle it; the first one wins, the other
    changes nothing (a cancel must not be overwritten by the answer, nor the answer by a late cancel)."""
    await responses.put("key-a", "resp_1", encode(QUEUED, ITEMS, until=123.0), retention=60, pending=True)
    found = await responses.get("key-a", "resp_1")
    assert found is not None and found.response["status"] == "queued" and found.until == 123.0
    assert await responses.is_pending("key-a", "resp_1") and not await responses.is_pending("key-b", "resp_1")
    assert not await responses.settle("key-b", "resp_1", encode(RESPONSE, ITEMS), retention=60)  # not its key's
    done = RESPONSE | {"status": "completed"}
    assert await responses.settle("key-a", "resp_1", encode(done, ITEMS), retention=60, item_ids=["msg_1"])
    assert not await responses.settle("key-a", "resp_1", encode(QUEUED | {"status": "cancelled"}, ITEMS), retention=60)
    assert not await responses.is_pending("key-a", "resp_1")
    found = await responses.get("key-a", "resp_1")
    assert found is not None and found.response == done and found.until is None
    assert (await responses.holder("key-a", "msg_1")).id == "resp_1"  # type: ignore[union-attr]
    assert not await responses.settle("key-a", "resp_9", encode(done, ITEMS), retention=60)  # never put


async def test_a_deleted_pending_response_is_not_brought_back_by_its_task(responses: ResponseStore) -> None:
    await responses.put("key-a", "resp_1", encode(QUEUED, ITEMS), retention=60, pending=True)
    await responses.put("key-a", "resp_2", encode(QUEUED, ITEMS), retention=60, pending=True)
    assert await responses.delete("key-a", "resp_1")
    assert not await responses.settle("key-a", "resp_1", encode(RESPONSE, ITEMS), retention=60)
    assert await responses.get("key-a", "resp_1") is None
    assert await responses.forget_key("key-a") == 1
    assert not await responses.settle("key-a", "resp_2", encode(RESPONSE, ITEMS), retention=60)
    assert await responses.get("key-a", "resp_2") is None


async def test_a_streamed_responses_events_are_read_on_from_any_point_and_go_with_it(responses: ResponseStore) -> None:
    await responses.put("key-a", "resp_1", encode(QUEUED, ITEMS), retention=60, pending=True)
    await responses.add_events("key-a", "resp_1", [(0, "e0"), (1, "e:1")], retention=60)
    await responses.add_events("key-a", "resp_1", [(2, "e0")], retention=60)  # the same text, another number
    assert await responses.events("key-a", "resp_1", after=-1) == [(0, "e0"), (1, "e:1"), (2, "e0")]
    assert await responses.events("key-a", "resp_1", after=1) == [(2, "e0")]
    assert await responses.events("key-a", "resp_1", after=-1, limit=1) == [(0, "e0")]  # is it streamed: one read
    assert await responses.events("key-a", "resp_1", after=0, limit=5) == [(1, "e:1"), (2, "e0")]
    assert await responses.events("key-a", "resp_1", after=2) == []
    await responses.add_events("key-a", "resp_1", [(5, "e5"), (9, "e9")], retention=60)  # numbers left out
    assert await responses.events("key-a", "resp_1", after=3) == [(5, "e5"), (9, "e9")]
    assert await responses.events("key-a", "resp_1", after=5) == [(9, "e9")]
    assert await responses.events("key-a", "resp_1", after=2, limit=1) == [(5, "e5")]
    assert await responses.events("key-b", "resp_1", after=-1) == []  # another key's: as if none
    await responses.put("key-a", "resp_2", encode(QUEUED, ITEMS), retention=60, pending=True)
    await responses.add_events("key-a", "resp_2", [(0, "x0")], retention=60)
    assert await responses.delete("key-a", "resp_1")
    assert await responses.events("key-a", "resp_1", after=-1) == []
    await responses.forget_key("key-a")
    assert await responses.events("key-a", "resp_2", after=-1) == []


async def test_events_of_a_response_deleted_while_it_streams_are_not_kept(responses: ResponseStore) -> None:
    """A streamed background response deleted while it ran went on adding its events (up to 4 MiB of them) for
    a response no purge or delete would ever name again: on SQLite each such response's rows stayed for good
    (the soak's mix counted 832 rows in 6,000 requests). Events are kept only for a response that is stored."""
    await responses.put("key-a", "resp_1", encode(QUEUED, ITEMS), retention=60, pending=True)
    await responses.add_events("key-a", "resp_1", [(0, "e0")], retention=60)
    assert await responses.delete("key-a", "resp_1")
    for seq in range(1, 101):  # the answer goes on after the delete, as its task notices only within a second
        await responses.add_events("key-a", "resp_1", [(seq, f"e{seq}")], retention=60)
    await responses.add_events("key-b", "resp_2", [(0, "x0")], retention=60)  # never stored at all
    assert await responses.events("key-a", "resp_1", after=-1) == []
    assert await responses.last_event("key-a", "resp_1") is None
    assert await responses.events("key-b", "resp_2", after=-1) == []
    assert await _events_held(responses) == 0


async def _events_held(responses: ResponseStore) -> int:
    """Every event the store holds, whoever's: SQLite's rows, Redis's members of the namespace's event sets."""
    if isinstance(responses, SQLiteResponseStore):
        return responses._query("SELECT COUNT(*) FROM response_events", ())[0][0]
    assert isinstance(responses, RedisResponseStore)
    names = [name async for name in responses.r.scan_iter(match=f"{responses.ns}:response_events:*")]
    return sum([await responses.r.zcard(name) for name in names])


async def test_events_a_release_before_2026_12_06_kept_as_a_list_are_still_read(tmp_path: Path) -> None:
    """Redis kept a streamed response's events as a list before they became a sorted set: after an upgrade,
    resuming one answered 503 "store unreachable" (WRONGTYPE) for the day it was kept. It is read as a list."""
    namespace = f"test-{secrets.token_hex(6)}"
    store = RedisResponseStore.from_url(redis_url(), namespace=namespace)
    try:
        await store.r.rpush(store._events_key("key-a", "resp_old"), "e0", "e:1", "e2")
        assert await store.events("key-a", "resp_old", after=-1) == [(0, "e0"), (1, "e:1"), (2, "e2")]
        assert await store.events("key-a", "resp_old", after=0, limit=1) == [(1, "e:1")]
        assert await store.events("key-a", "resp_old", after=2) == []
        assert await store.last_event("key-a", "resp_old") == (2, "e2")
        await store.r.set(store._events_key("key-a", "resp_odd"), "not events")  # any other wrong type: a 503
        with pytest.raises(StoreUnavailable):
            await store.events("key-a", "resp_odd", after=-1)
    finally:
        await drop_keys(store.r, namespace)
        await store.aclose()
