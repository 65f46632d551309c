"""Stored responses as parts, on SQLite and on Redis alike: each response keeps its own object and input items and
names the response it continues, so a chain of N turns takes space linear in N (it took N² / 2: each record held
the whole conversation before it). Its conversation is read through its ancestors' parts, which live as long as
it does; a deleted response others continue is kept hidden for them; a record stored whole before parts reads as
it did."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from shared.store import responses as responses_module
from shared.store.responses import (
    EMPTY,
    RedisResponseStore,
    ResponseStore,
    SQLiteResponseStore,
    encode,
    joined,
    list_size,
    response_text,
    within_bound,
)
from tests.store.conftest import drop_keys, redis_url

ANSWER = "a" * 2500  # a 2.5 KB answer each turn


def turn(i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``i``th turn of a chain: its response object (a 2.5 KB answer) and its one new input item."""
    asked = {"id": f"msg_in_{i}", "type": "message", "role": "user", "status": "completed",
             "content": [{"type": "input_text", "text": f"Question {i}?"}]}
    answer = {"id": f"msg_out_{i}", "type": "message", "role": "assistant", "status": "completed",
              "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]}
    return {"id": f"resp_{i}", "object": "response", "status": "completed", "output": [answer]}, [asked]


async def chain(responses: ResponseStore, key_id: str, turns: range, *, prev: str | None = None,
                size: int = EMPTY, retention: float = 60) -> tuple[str, int, int]:
    """Store ``turns`` as the API does, each continuing the one before (the first ``prev``, whose conversation
    measures ``size``): the last id, its conversation's size, and the sum of the turns' own sizes."""
    own = 0
    for i in turns:
        response, added = turn(i)
        data = encode(response, added, prev=prev, before=size) if prev else encode(response, added)
        assert await responses.put(key_id, response["id"], data, retention=retention,
                                   item_ids=[added[0]["id"], response["output"][0]["id"]])
        own += len(json.dumps(response).encode()) + len(json.dumps(added).encode())
        prev, size = response["id"], joined(joined(size, list_size(added)), list_size(response["output"]))
    assert prev is not None
    return prev, size, own


def conversation(turns: range) -> list[str]:
    """The item ids of the conversation the last of ``turns`` answered (from the first)."""
    ids = [item_id for i in turns for item_id in (f"msg_in_{i}", f"msg_out_{i}")]
    return ids[:-1]


async def stored_bytes(responses: ResponseStore, key_id: str) -> int:
    """What the store holds of ``key_id``'s responses, in bytes: its rows' data, or its Redis strings (parts,
    hidden ones included)."""
    if isinstance(responses, SQLiteResponseStore):
        return responses._query("SELECT COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM stored_responses "
                                "WHERE key_id = ?", (key_id,))[0][0]
    assert isinstance(responses, RedisResponseStore)
    total = 0
    for kind in ("response", "response_hidden"):
        async for name in responses.r.scan_iter(match=f"{responses.ns}:{kind}:{key_id}:*"):
            total += await responses.r.strlen(name)
    return total


async def parts_of(responses: ResponseStore, key_id: str) -> list[str]:
    """The ids of the parts the store holds of ``key_id`` (hidden ones included), sorted."""
    if isinstance(responses, SQLiteResponseStore):
        return [row[0] for row in responses._query("SELECT id FROM stored_responses WHERE key_id = ? ORDER BY id",
                                                   (key_id,))]
    assert isinstance(responses, RedisResponseStore)
    ids = set()
    for kind in ("response", "response_hidden"):
        async for name in responses.r.scan_iter(match=f"{responses.ns}:{kind}:{key_id}:*"):
            if await responses.r.get(name) != responses_module.MOVED.encode():
                ids.add(name.decode().rpartition(":")[2])
    return sorted(ids)


async def left_of(responses: ResponseStore, key_id: str) -> int:
    """How many rows or names of ``key_id``'s responses the store holds (parts, hidden ones, items, counts)."""
    if isinstance(responses, SQLiteResponseStore):
        return sum(responses._query(f"SELECT COUNT(*) FROM {table} WHERE key_id = ?", (key_id,))[0][0]
                   for table in ("stored_responses", "stored_response_items"))
    assert isinstance(responses, RedisResponseStore)
    return len([name async for name in responses.r.scan_iter(match=f"{responses.ns}:response*:{key_id}:*")])


async def test_a_long_chain_takes_space_linear_in_its_turns(responses: ResponseStore) -> None:
    """100 turns of 2.5 KB answers: each record held the whole conversation before it, about 50 times the turns'
    own bytes in all (12 MiB for 250 KiB); each keeps its own part now."""
    last, _, own = await chain(responses, "key-a", range(100))
    stored = await stored_bytes(responses, "key-a")
    assert stored < 3 * own, f"{stored} bytes stored for turns of {own} bytes"
    found = await responses.get("key-a", last)
    assert found is not None and [item["id"] for item in found.items] == conversation(range(100))
    assert found.response == turn(99)[0]
    middle = await responses.get("key-a", "resp_50")
    assert middle is not None and [item["id"] for item in middle.items] == conversation(range(51))


async def test_a_deleted_response_others_continue_is_kept_hidden_for_them(responses: ResponseStore) -> None:
    """Deleting a middle response: it is gone for its key at once, its descendants keep their whole conversation;
    once they are deleted too, nothing is left (a response no one continues goes at once, and its hidden
    ancestors kept only for it with it)."""
    first, size, _ = await chain(responses, "key-a", range(3))
    first_bytes = await stored_bytes(responses, "key-a")  # Redis: then each moved aside, as it lives longer
    last, _, _ = await chain(responses, "key-a", range(3, 10), prev=first, size=size)
    assert await responses.delete("key-a", "resp_4")
    assert await responses.get("key-a", "resp_4") is None
    assert not await responses.delete("key-a", "resp_4")
    assert await responses.holder("key-a", "msg_out_4") is None  # its items are not found by reference
    found = await responses.get("key-a", last)
    assert found is not None and [item["id"] for item in found.items] == conversation(range(10))
    found = await responses.holder("key-a", "msg_in_7")  # a descendant found by its item: whole too
    assert found is not None and found.id == "resp_7" and len(found.items) == 15
    assert await responses.delete("key-a", "resp_3")  # its ancestor: hidden too (4, hidden, continues it)
    found = await responses.get("key-a", last)
    assert found is not None and [item["id"] for item in found.items] == conversation(range(10))
    for i in range(9, 4, -1):  # the descendants, last first: each goes at once, and the hidden 4 and 3 with 5
        before = await left_of(responses, "key-a")
        assert await responses.delete("key-a", f"resp_{i}")
        assert await left_of(responses, "key-a") < before
    assert await parts_of(responses, "key-a") == ["resp_0", "resp_1", "resp_2"]
    assert await stored_bytes(responses, "key-a") <= first_bytes + 3 * len(responses_module.MOVED)
    found = await responses.get("key-a", "resp_2")
    assert found is not None and [item["id"] for item in found.items] == conversation(range(3))


async def test_an_ancestor_lives_as_long_as_its_last_descendant(responses: ResponseStore) -> None:
    """Each response is readable for its retention after its own write, whole: its ancestors written earlier
    live on with it; once every one passed its retention, nothing is left in the store."""
    first, size, _ = await chain(responses, "key-a", range(3), retention=0.6)
    await asyncio.sleep(0.4)
    last, _, _ = await chain(responses, "key-a", range(3, 5), prev=first, size=size, retention=0.6)
    await asyncio.sleep(0.35)  # the first three passed their own retention, the last two not
    found = await responses.get("key-a", last)
    assert found is not None and [item["id"] for item in found.items] == conversation(range(5))
    for gone in ("resp_0", "resp_2"):  # read themselves, they are gone after their own retention, as before
        assert await responses.get("key-a", gone) is None and not await responses.delete("key-a", gone)
    assert await responses.holder("key-a", "msg_out_2") is None
    found = await responses.holder("key-a", "msg_out_3")
    assert found is not None and [item["id"] for item in found.items] == conversation(range(4))
    await asyncio.sleep(0.4)
    if isinstance(responses, SQLiteResponseStore):
        responses._next_purge = 0.0  # the next write purges the expired rows
    await chain(responses, "key-b", range(10, 11))
    assert await responses.get("key-a", last) is None
    assert await left_of(responses, "key-a") == 0


async def test_a_response_stored_whole_before_parts_is_continued(responses: ResponseStore) -> None:
    """A record written before parts (one JSON text: the response and its whole conversation) reads as it did,
    and a response continuing it after an upgrade reads its conversation through it."""
    response, added = turn(1)
    before = [turn(0)[1][0], turn(0)[0]["output"][0]]
    old = json.dumps({"response": response, "items": before + added}, separators=(",", ":"), ensure_ascii=False)
    await responses.put("key-a", "resp_1", old, retention=60, item_ids=["msg_in_1", "msg_out_1"])
    found = await responses.get("key-a", "resp_1")
    assert found is not None and [item["id"] for item in found.items] == conversation(range(2))
    last, _, _ = await chain(responses, "key-a", range(2, 4), prev="resp_1", size=found.size)
    found = await responses.get("key-a", last)
    assert found is not None and [item["id"] for item in found.items] == conversation(range(4))


async def test_a_deleted_key_takes_its_hidden_parts_with_it(responses: ResponseStore) -> None:
    last, _, _ = await chain(responses, "key-a", range(4))
    await chain(responses, "key-b", range(10, 12))  # ids are unique across keys (SQLite's primary key)
    assert await responses.delete("key-a", "resp_1")  # hidden: 2 and 3 continue it
    assert await responses.forget_key("key-a") == 3  # the deleted one goes too, uncounted
    assert await left_of(responses, "key-a") == 0 and await responses.get("key-a", last) is None
    assert await responses.get("key-b", "resp_11") is not None


async def test_a_response_continuing_one_gone_is_not_written(responses: ResponseStore) -> None:
    """Its conversation is no longer there to read: the caller is told (``PreviousGone``), nothing is kept."""
    response, added = turn(1)
    with pytest.raises(responses_module.PreviousGone):
        await responses.put("key-a", "resp_1", encode(response, added, prev="resp_0", before=100), retention=60)
    assert await left_of(responses, "key-a") == 0


@pytest.mark.parametrize("text", ["a", "é", "日本\n\""])
def test_the_bound_measures_what_a_whole_record_measured(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1 MiB bound is on the record as it was stored whole (the response object and its whole conversation in
    one JSON text), counted from the sizes the parts carry: to the byte, so a chain is stored up to the same
    turn as before."""
    items: list[dict[str, Any]] = []
    size = EMPTY
    for i in range(30):
        added = [{"id": f"msg_{i}", "type": "message", "content": text * (i * 37 % 500)}]
        response = {"id": f"resp_{i}", "output": [{"id": f"out_{i}", "text": text * 300}], "store": True}
        items, size = items + added, joined(size, list_size(added))
        for until in (None, 1234.5):
            whole = {"response": response, "items": items} | ({"until": until} if until is not None else {})
            measured = len(json.dumps(whole, separators=(",", ":"), ensure_ascii=False).encode())
            monkeypatch.setattr(responses_module, "MAX_STORED_BYTES", measured)
            assert within_bound(response, size, until)
            monkeypatch.setattr(responses_module, "MAX_STORED_BYTES", measured - 1)
            assert not within_bound(response, size, until)
        items, size = items + response["output"], joined(size, list_size(response["output"]))


@pytest.mark.parametrize(("prev", "until"), [(None, None), (None, 1234.5), ("resp_0", None), ("resp_0", 99.25)])
def test_a_part_is_the_json_text_it_always_was(prev: str | None, until: float | None) -> None:
    """A part made from its object's ``response_text`` (encoded once, for the bound and the write) is, to the byte,
    the one JSON text a part always was: what stored parts hold, and where the Redis scripts read ``prev``."""
    response, added = turn(3)
    response["output"][0]["content"][0]["text"] = "日本\n\"é"
    data: dict[str, Any] = {"prev": prev, "before": 321} if prev is not None else {}
    data |= {"response": response, "items": added} | ({"until": until} if until is not None else {})
    expected = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    before = {} if prev is None else {"prev": prev, "before": 321}
    assert encode(response_text(response), added, until=until, **before) == expected
    assert encode(response, added, until=until, **before) == expected
    assert responses_module.prev_of(expected) == prev


async def test_a_sqlite_file_of_a_release_before_parts_is_read_and_continued(tmp_path: Path) -> None:
    """The table gains its columns at start; its rows, each a whole record, read as they did."""
    db = sqlite3.connect(tmp_path / "r.db")
    db.executescript(responses_module.SCHEMA)  # the table as such a release made it (no prev, hidden...)
    response, added = turn(1)
    old = json.dumps({"response": response, "items": [turn(0)[1][0], turn(0)[0]["output"][0], *added]})
    db.execute("INSERT INTO stored_responses (id, key_id, data, expires_at) VALUES (?,?,?,?)",
               ("resp_1", "key-a", old, time.time() + 60))
    db.commit()
    db.close()
    store = SQLiteResponseStore(tmp_path / "r.db")
    try:
        found = await store.get("key-a", "resp_1")
        assert found is not None and [item["id"] for item in found.items] == conversation(range(2))
        last, _, _ = await chain(store, "key-a", range(2, 4), prev="resp_1", size=found.size)
        found = await store.get("key-a", last)
        assert found is not None and [item["id"] for item in found.items] == conversation(range(4))
        assert await store.delete("key-a", "resp_1")  # hidden: 2 and 3 continue it
        found = await store.get("key-a", last)
        assert found is not None and len(found.items) == 7
    finally:
        await store.aclose()


async def test_deleting_the_last_turn_takes_the_earlier_ones_past_their_retention(responses: ResponseStore) -> None:
    """Turns kept only for a later one's conversation (past their own retention) go when it is deleted."""
    first, size, _ = await chain(responses, "key-a", range(2), retention=0.3)
    await asyncio.sleep(0.1)
    last, _, _ = await chain(responses, "key-a", range(2, 3), prev=first, size=size, retention=60)
    await asyncio.sleep(0.3)  # the first two passed their own retention
    assert await responses.get("key-a", "resp_0") is None and await responses.get("key-a", last) is not None
    assert await responses.delete("key-a", last)
    assert await parts_of(responses, "key-a") == []
    if isinstance(responses, SQLiteResponseStore):  # their items' rows too (Redis expires its item names itself)
        assert await left_of(responses, "key-a") == 0


async def test_a_deleted_response_goes_with_its_last_live_continuation(responses: ResponseStore) -> None:
    """A response continued twice (two agents' turns after it) is deleted: hidden, for them. One of them expires,
    then the other is deleted: nothing continues the deleted response any more, and it goes at once, as the README
    says. The expired turn was still counted as continuing it (Redis's count of its continuations, SQLite's row not
    yet purged), so the deleted response's part stayed stored, hidden, until the other turn would have expired
    (with a day's retention, up to a day after its last deletion)."""
    first, size, _ = await chain(responses, "key-a", range(1))
    await chain(responses, "key-a", range(1, 2), prev=first, size=size, retention=0.3)  # soon expired
    await chain(responses, "key-a", range(2, 3), prev=first, size=size)
    assert await responses.delete("key-a", first)  # hidden: 1 and 2 continue it
    await asyncio.sleep(0.4)  # 1 expired (not read since: a read of it would drop its SQLite row)
    assert await responses.delete("key-a", "resp_2")
    assert first not in await parts_of(responses, "key-a")  # (1's expired row is SQLite's next purge's)


@pytest.mark.redis
async def test_a_count_of_continuations_an_earlier_release_wrote_is_kept_as_a_count(tmp_path: Path) -> None:
    """Redis kept a count of the responses continuing one until 2026-12-07, a set of their ids since: a count
    written before the upgrade is still counted up and down as it was, and the response goes with its last
    continuation."""
    namespace = f"test-{secrets.token_hex(6)}"
    store = RedisResponseStore.from_url(redis_url(), namespace=namespace)
    try:
        first, size, _ = await chain(store, "key-a", range(1))
        await chain(store, "key-a", range(1, 2), prev=first, size=size)
        kids = store._kids_key("key-a", first)
        await store.r.delete(kids)
        await store.r.set(kids, 1, px=60_000)  # as the earlier release left it
        await chain(store, "key-a", range(2, 3), prev=first, size=size)
        assert await store.r.get(kids) == b"2"
        assert await store.delete("key-a", first)  # hidden: 1 and 2 continue it
        assert await store.delete("key-a", "resp_1")
        assert first in await parts_of(store, "key-a")
        assert await store.delete("key-a", "resp_2")
        assert await parts_of(store, "key-a") == []
    finally:
        await drop_keys(store.r, namespace)
        await store.aclose()
