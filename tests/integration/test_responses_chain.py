"""A long ``previous_response_id`` chain (the Agents SDK's flow) through the real API and miners, on SQLite and on
Redis: it takes store space linear in its turns (each record held the whole conversation before it, N² / 2 in
all), deleting a response in its middle leaves the ones after it whole, a record stored before parts is continued
after an upgrade, and the 1 MiB bound ends storing at the same turn as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from api.responses_render import new_id
from api.responses_state import stored_item
from shared.store import responses as responses_module
from shared.store.base import hash_key
from shared.store.responses import SQLiteResponseStore
from tests.helpers import (
    ApiUnderTest,
    Script,
    api_with_miners,
    call,
    chunk,
    fresh_namespace,
    openai_client,
    paced,
    sse,
)

STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]
ANSWER = "a" * 2500  # a 2.5 KB answer each turn


def answering(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


@contextlib.asynccontextmanager
async def api_on(store: str, tmp_path: Path, miner: Script, **settings: Any) -> AsyncIterator[ApiUnderTest]:
    """The API on a SQLite file or on Redis (a fresh namespace, dropped afterwards), with one scripted miner."""
    async with fresh_namespace(store, "chain") as namespace, \
            api_with_miners(tmp_path, {1: miner}, redis_namespace=namespace, **settings) as api:
        yield api


async def key_id_of(api: ApiUnderTest) -> str:
    found = await api.ctx.store.get_key(hash_key(api.key))
    assert found is not None
    return found.id


async def stored_bytes(api: ApiUnderTest, key_id: str) -> int:
    """What the response store holds of ``key_id``'s responses, in bytes, read from the store itself: its rows'
    data, or its Redis strings (hidden ones included)."""
    responses = api.ctx.responses
    if isinstance(responses, SQLiteResponseStore):
        return responses._query("SELECT COALESCE(SUM(LENGTH(CAST(data AS BLOB))), 0) FROM stored_responses "
                                "WHERE key_id = ?", (key_id,))[0][0]
    total = 0
    for kind in ("response", "response_hidden"):
        async for name in responses.r.scan_iter(match=f"{responses.ns}:{kind}:{key_id}:*"):
            total += await responses.r.strlen(name)
    return total


async def names_left(api: ApiUnderTest, key_id: str) -> int:
    """How many rows or Redis names of ``key_id``'s responses are left (parts, hidden ones, items, counts)."""
    responses = api.ctx.responses
    if isinstance(responses, SQLiteResponseStore):
        return sum(responses._query(f"SELECT COUNT(*) FROM {table} WHERE key_id = ?", (key_id,))[0][0]
                   for table in ("stored_responses", "stored_response_items"))
    return len([name async for name in responses.r.scan_iter(match=f"{responses.ns}:response*:{key_id}:*")])


async def turns(api: ApiUnderTest, n: int, prev: str | None = None) -> list[dict[str, Any]]:
    """``n`` turns, each continuing the one before (the first ``prev``): the response objects, as sent."""
    made = []
    for i in range(n):
        body: dict[str, Any] = {"model": "default", "input": f"Question {i}?"}
        if prev is not None:
            body["previous_response_id"] = prev
        status, response = await call(api, "POST", "/v1/responses", body)
        assert status == 200 and response["store"] is True, response
        made.append(response)
        prev = response["id"]
    return made


async def listed(api: ApiUnderTest, response_id: str) -> list[dict[str, Any]]:
    """Every input item of a stored response, in order (``input_items``, paged)."""
    return await every_item(api, f"/v1/responses/{response_id}/input_items")


async def every_item(api: ApiUnderTest, path: str) -> list[dict[str, Any]]:
    """Every item of a paged list of items (a response's input items, a conversation's), oldest first."""
    items: list[dict[str, Any]] = []
    after = ""
    while True:
        status, page = await call(api, "GET", f"{path}?order=asc&limit=100{after}")
        assert status == 200, page
        items += page["data"]
        if not page["has_more"]:
            return items
        after = f"&after={page['last_id']}"


@pytest.mark.parametrize("store", STORES)
async def test_a_long_chain_takes_store_space_linear_in_its_turns(tmp_path: Path, store: str) -> None:
    """50 turns of 2.5 KB answers: 3.7 MiB stored for about 150 KiB of turns before (each record held the whole
    conversation before it); each response keeps its own object and input items now."""
    async with api_on(store, tmp_path, answering(ANSWER)) as api:
        made = await turns(api, 50)
        items = await listed(api, made[-1]["id"])
        assert len(items) == 99 and [item["role"] for item in items] == ["user", "assistant"] * 49 + ["user"]
        own = sum(len(json.dumps(r, separators=(",", ":")).encode()) for r in made) + sum(
            len(json.dumps(item, separators=(",", ":")).encode()) for item in items if item["role"] == "user")
        stored = await stored_bytes(api, await key_id_of(api))
        print(f"{store}: 50 turns of {own} bytes stored as {stored} bytes")
        assert stored < 3 * own, f"{stored} bytes stored for turns of {own} bytes"


@pytest.mark.parametrize("store", STORES)
async def test_deleting_a_response_in_a_chain_leaves_the_ones_after_it_whole(tmp_path: Path, store: str) -> None:
    """A 30-turn chain, its 15th response deleted: that one is gone (404, and the 400 to continue), the last one
    still lists every item and is continued with the whole conversation; an item_reference to an item the deleted
    one added is the 404 it was, unless the conversation continued holds it."""
    miner = answering("Noted.")
    async with api_on(store, tmp_path, miner) as api:
        made = await turns(api, 30)
        last, middle = made[-1]["id"], made[14]["id"]
        before = await listed(api, last)
        assert len(before) == 59
        assert await call(api, "DELETE", f"/v1/responses/{middle}") == (
            200, {"id": middle, "object": "response.deleted", "deleted": True})
        assert await listed(api, last) == before
        for method, path in (("GET", middle), ("GET", f"{middle}/input_items"), ("DELETE", middle)):
            status, body = await call(api, method, f"/v1/responses/{path}")
            assert (status, body["error"]["code"]) == (404, "response_not_found"), body
        status, body = await call(api, "POST", "/v1/responses", {"model": "default", "input": "Again?",
                                                                  "previous_response_id": middle})
        assert (status, body["error"]["code"]) == (400, "previous_response_not_found"), body
        answer_id = made[14]["output"][0]["id"]
        status, body = await call(api, "POST", "/v1/responses", {
            "model": "default", "input": [{"type": "item_reference", "id": answer_id}]})
        assert (status, body["error"]["param"]) == (404, "input"), body
        client = openai_client(api)
        went_on = await client.responses.create(model="default", input=[
            {"type": "item_reference", "id": answer_id}, {"role": "user", "content": "Last?"}],
            previous_response_id=last)
        assert went_on.status == "completed"
        assert len(miner.bodies[-1]["messages"]) == 62  # 30 questions, 30 answers, the reference and the question
        assert len(await listed(api, went_on.id)) == 62


@pytest.mark.parametrize("store", STORES)
async def test_a_response_stored_whole_before_parts_is_continued(tmp_path: Path, store: str) -> None:
    """A record stored before parts (one JSON text: the response and its whole conversation), as an upgrade finds
    it: read and continued as it was, and its continuations read through it."""
    miner = answering("Noted.")
    async with api_on(store, tmp_path, miner) as api:
        key_id, old_id = await key_id_of(api), new_id("resp")
        asked = [stored_item({"role": "user", "content": "My name is Ada."}),
                 stored_item({"role": "assistant", "content": "Hello Ada."}),
                 stored_item({"role": "user", "content": "Remember it."})]
        response = {"id": old_id, "object": "response", "created_at": 1, "status": "completed", "model": "default",
                    "output": [stored_item({"role": "assistant", "content": "I will."})], "store": True}
        old = json.dumps({"response": response, "items": asked}, separators=(",", ":"), ensure_ascii=False)
        assert await api.ctx.responses.put(key_id, old_id, old, retention=60,
                                           item_ids=[asked[-1]["id"], response["output"][0]["id"]])
        assert [item["id"] for item in await listed(api, old_id)] == [item["id"] for item in asked]
        made = await turns(api, 2, prev=old_id)
        assert [m["content"] for m in miner.bodies[-1]["messages"]][:5] == [
            [{"type": "text", "text": "My name is Ada."}], "Hello Ada.", [{"type": "text", "text": "Remember it."}],
            "I will.", [{"type": "text", "text": "Question 0?"}]]
        items = await listed(api, made[-1]["id"])
        assert [item["id"] for item in items][:4] == [*(item["id"] for item in asked), response["output"][0]["id"]]
        assert len(items) == 7


async def test_the_size_bound_ends_storing_at_the_same_turn_as_before(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is on what a record held before parts: the response object and its whole conversation, in one
    JSON text. Each turn is stored while that is within it, and the first turn past it is answered, not stored."""
    monkeypatch.setattr(responses_module, "MAX_STORED_BYTES", 30_000)
    async with api_on("sqlite", tmp_path, answering(ANSWER)) as api:
        items: list[dict[str, Any]] = []
        prev: str | None = None
        for i in range(20):
            asked = {"type": "message", "role": "user", "content": f"Question {i}?", "id": f"msg_q{i:04d}"}
            body: dict[str, Any] = {"model": "default", "input": [asked]} | (
                {"previous_response_id": prev} if prev else {})
            status, response = await call(api, "POST", "/v1/responses", body)
            assert status == 200, response
            items.append(stored_item(asked))
            whole = json.dumps({"response": response | {"store": True}, "items": items}, separators=(",", ":"),
                               ensure_ascii=False)
            if response["store"] is False:
                assert len(whole.encode()) > 30_000 and i > 5
                break
            assert len(whole.encode()) <= 30_000
            assert await listed(api, response["id"]) == items
            items += response["output"]
            prev = response["id"]
        else:
            raise AssertionError("every turn was stored")


@pytest.mark.parametrize("store", STORES)
async def test_a_response_lives_its_retention_with_its_whole_conversation(tmp_path: Path, store: str) -> None:
    """Each response is readable for the retention after its own write, with its whole conversation: the earlier
    turns it continues are read through it after their own retention (themselves a 404 then, as before); once
    every turn passed its retention, nothing of them is left in the store."""
    async with api_on(store, tmp_path, answering("Noted."), responses_retention_seconds=1.5) as api:
        first = await turns(api, 2)
        await asyncio.sleep(0.8)
        then = await turns(api, 1, prev=first[-1]["id"])
        await asyncio.sleep(0.9)  # the first two passed their retention, the last not
        assert len(await listed(api, then[0]["id"])) == 5
        status, body = await call(api, "GET", f"/v1/responses/{first[0]['id']}")
        assert status == 404, body
        status, body = await call(api, "POST", "/v1/responses", {"model": "default", "input": "Again?",
                                                                  "previous_response_id": first[-1]["id"]})
        assert (status, body["error"]["code"]) == (400, "previous_response_not_found"), body
        await asyncio.sleep(0.8)
        status, _ = await call(api, "GET", f"/v1/responses/{then[0]['id']}")
        assert status == 404
        if isinstance(api.ctx.responses, SQLiteResponseStore):
            api.ctx.responses._next_purge = 0.0  # the next write purges what expired
        await turns(api, 1)  # a write: SQLite purges then
        assert await names_left(api, await key_id_of(api)) == 3  # the new turn's part and its two items alone


@pytest.mark.parametrize("store", STORES)
async def test_a_background_turn_in_a_chain_keeps_its_conversation(tmp_path: Path, store: str) -> None:
    """A background response continuing a chain, its previous response deleted while it is answered: it is
    settled with its whole conversation, and continued in turn; a cancelled one reads as before."""
    miner = answering("Later.")
    async with api_on(store, tmp_path, miner) as api:
        client = openai_client(api)
        made = await turns(api, 3)
        paced(miner, 0.5)
        queued = await client.responses.create(model="default", input="Slowly?", background=True,
                                               previous_response_id=made[-1]["id"])
        assert (await call(api, "DELETE", f"/v1/responses/{made[-1]['id']}"))[0] == 200
        for _ in range(200):
            done = await client.responses.retrieve(queued.id)
            if done.status not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.02)
        assert (done.status, done.output_text) == ("completed", "Later.")
        assert len(await listed(api, queued.id)) == 7
        paced(miner, 0)
        went_on = await turns(api, 1, prev=queued.id)
        assert len(await listed(api, went_on[0]["id"])) == 9
        paced(miner, 0.5)
        cancelled = await client.responses.create(model="default", input="Never?", background=True,
                                                  previous_response_id=went_on[0]["id"])
        assert (await client.responses.cancel(cancelled.id)).status == "cancelled"
        assert (await client.responses.retrieve(cancelled.id)).status == "cancelled"
        assert len(await listed(api, cancelled.id)) == 11


@pytest.mark.parametrize("store", STORES)
async def test_a_turn_whose_previous_response_is_deleted_as_it_is_answered_is_stored_whole(
        tmp_path: Path, store: str) -> None:
    """Its part could name no response any more: it is stored with its whole conversation, as before parts."""
    miner = answering("Later.")
    async with api_on(store, tmp_path, miner) as api:
        made = await turns(api, 2)
        paced(miner, 0.5)
        client = openai_client(api)
        asked = asyncio.ensure_future(client.responses.create(model="default", input="Slowly?",
                                                              previous_response_id=made[-1]["id"]))
        await asyncio.sleep(0.2)
        assert (await call(api, "DELETE", f"/v1/responses/{made[-1]['id']}"))[0] == 200
        answered = await asyncio.wait_for(asked, 10)
        assert answered.to_dict()["store"] is True
        assert len(await listed(api, answered.id)) == 5
        paced(miner, 0)
        assert (await turns(api, 1, prev=answered.id))[0]["store"] is True


async def evict(api: ApiUnderTest, key_id: str, response_id: str) -> None:
    """Take a stored response's part out of the store behind the API's back, as a Redis at its ``maxmemory`` under
    a ``volatile-*`` policy evicts it (its visible name, and its part moved aside once later turns continued it)."""
    responses = api.ctx.responses
    if isinstance(responses, SQLiteResponseStore):
        responses._tx(lambda db: db.execute("DELETE FROM stored_responses WHERE id = ?", (response_id,)))
        return
    assert await responses.r.delete(responses._key(key_id, response_id),
                                    responses._hidden_key(key_id, response_id)) >= 1


@pytest.mark.parametrize("store", STORES)
async def test_a_response_whose_ancestor_was_evicted_says_which_is_missing(tmp_path: Path, store: str) -> None:
    """A 3-turn chain whose first response's part is evicted: continuing the last one is the 400 naming the
    response gone (it read as "not found" itself, a response that is there), and so is listing its input items;
    the objects themselves are still read (they were 404s), and no miner is asked to answer a conversation cut
    short."""
    miner = answering("Noted.")
    async with api_on(store, tmp_path, miner) as api:
        made = await turns(api, 3)
        first, last = made[0]["id"], made[-1]["id"]
        await evict(api, await key_id_of(api), first)
        asked = miner.calls
        status, body = await call(api, "POST", "/v1/responses", {"model": "default", "input": "More?",
                                                                  "previous_response_id": last})
        assert (status, body["error"]["code"], body["error"]["param"]) == (
            400, "previous_response_not_found", "previous_response_id"), body
        assert f"'{last}' cannot be continued" in body["error"]["message"]
        assert f"response '{first}', earlier in its chain" in body["error"]["message"]
        assert miner.calls == asked
        status, body = await call(api, "GET", f"/v1/responses/{last}/input_items")
        assert (status, body["error"]["param"]) == (400, "response_id") and first in body["error"]["message"], body
        assert await call(api, "GET", f"/v1/responses/{last}") == (200, made[-1])
        assert await call(api, "GET", f"/v1/responses/{made[1]['id']}") == (200, made[1])
