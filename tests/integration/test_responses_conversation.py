"""Responses stored in a ``conversation``, through the real API and miners, on SQLite and on Redis: each turn's record
names the conversation's last stored turn and keeps only what came after it (its input, and items added to the
conversation between turns), so a conversation takes store space linear in its turns (each record held the whole
conversation before it, N² / 2 in all). What a caller reads is as it was: each response's input items are the
conversation it answered, as it was then, whatever is later deleted from the conversation, the conversation itself
or a response in its middle; ``previous_response_id`` may name one of them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from api.responses_state import Keeping
from shared.store.conversations import SQLiteConversationStore
from shared.store.responses import SQLiteResponseStore, prev_of
from tests.helpers import ApiUnderTest, Script, call, chunk, openai_client, sse
from tests.integration.test_responses_background import polled
from tests.integration.test_responses_chain import (
    ANSWER,
    STORES,
    answering,
    api_on,
    every_item,
    key_id_of,
    listed,
    stored_bytes,
)
from tests.integration.test_storage_budget import stored_today


async def conversation_items(api: ApiUnderTest, conversation_id: str) -> list[dict[str, Any]]:
    """Every item of a conversation, oldest first (paged)."""
    return await every_item(api, f"/v1/conversations/{conversation_id}/items")


async def new_conversation(api: ApiUnderTest, *said: str) -> str:
    status, made = await call(api, "POST", "/v1/conversations", {
        "items": [{"type": "message", "role": "user", "content": text} for text in said]})
    assert status == 200, made
    return made["id"]


async def turn(api: ApiUnderTest, conversation_id: str, text: str, **more: Any) -> dict[str, Any]:
    """One stored turn of the conversation: its response object, as sent."""
    status, response = await call(api, "POST", "/v1/responses", {"model": "default", "input": text,
                                                                 "conversation": conversation_id} | more)
    assert status == 200 and response["store"] is True, response
    return response


async def part_prev(api: ApiUnderTest, response_id: str) -> str | None:
    """The response a stored response's part names (None: it holds its whole conversation), read from the store."""
    responses, key_id = api.ctx.responses, await key_id_of(api)
    if isinstance(responses, SQLiteResponseStore):
        rows = responses._query("SELECT data FROM stored_responses WHERE id = ? AND key_id = ?", (response_id, key_id))
        return prev_of(rows[0][0])
    return prev_of(await responses.r.get(f"{responses.ns}:response:{key_id}:{response_id}"))


def holder_reads(api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The item ids the response store is asked the holder of from now on (each reads that response's chain)."""
    asked: list[str] = []
    holder = api.ctx.responses.holder

    async def counted(key_id: str, item_id: str) -> Any:
        asked.append(item_id)
        return await holder(key_id, item_id)

    monkeypatch.setattr(api.ctx.responses, "holder", counted)
    return asked


async def set_name(api: ApiUnderTest, conversation_id: str, text: str | None) -> None:
    """The conversation record's name of its last stored turn, set in the store (None: none, as a record written
    before 2026-12-07 has)."""
    conversations, key_id = api.ctx.conversations, await key_id_of(api)
    if isinstance(conversations, SQLiteConversationStore):
        conversations._tx(lambda db: db.execute("UPDATE conversations SET last_turn = ? WHERE id = ?",
                                                (text, conversation_id)))
        return
    head = f"{conversations.ns}:conversation:{key_id}:{conversation_id}"
    await (conversations.r.hdel(head, "last") if text is None else conversations.r.hset(head, "last", text))


async def checked_turn(api: ApiUnderTest, conversation_id: str, text: str) -> dict[str, Any]:
    """A stored turn whose input items read back as exactly the conversation as it was, then its input."""
    before = await conversation_items(api, conversation_id)
    made = await turn(api, conversation_id, text)
    items = await listed(api, made["id"])
    assert items[:-1] == before and items[-1]["content"] == [{"type": "input_text", "text": text}], made["id"]
    return made


@pytest.mark.parametrize("store", STORES)
async def test_a_turn_continues_the_turn_its_conversation_names_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    """Each stored turn names itself on its conversation's record: the next is stored as a part after it with no read
    of its stored response (the lookup read that response's whole chain each turn, about as much again as the
    conversation), items added to the conversation between turns included, each read back exactly."""
    async with api_on(store, tmp_path, answering("Noted.")) as api:
        conversation_id = await new_conversation(api, "I live in Paris.")
        made = [await checked_turn(api, conversation_id, "Question 0?")]
        asked = holder_reads(api, monkeypatch)
        for i in range(1, 6):
            if i == 3:
                status, _ = await call(api, "POST", f"/v1/conversations/{conversation_id}/items", {"items": [
                    {"type": "message", "role": "user", "content": "Also: I like tea."}]})
                assert status == 200
            made.append(await checked_turn(api, conversation_id, f"Question {i}?"))
            assert await part_prev(api, made[-1]["id"]) == made[-2]["id"]
        assert asked == []


@pytest.mark.parametrize("store", STORES)
async def test_a_record_without_a_name_or_with_one_that_no_longer_holds_is_read_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    """Records written before the name (or by a worker of that release, in a fleet being upgraded) are continued as
    before: no name, an unreadable one, a turn of an old worker (which names nothing), an item deleted before the
    named turn, a named response deleted: each turn's input items read back exactly, stored as a part after the
    last stored turn it can continue, or whole."""
    async with api_on(store, tmp_path, answering("Noted.")) as api:
        conversation_id = await new_conversation(api, "I live in Paris.")
        made = [await checked_turn(api, conversation_id, f"Question {i}?") for i in range(2)]
        asked = holder_reads(api, monkeypatch)
        for name in (None, '{"id":7}', "not json"):  # an old record's none; a later release's form; garbage
            await set_name(api, conversation_id, name)
            made.append(await checked_turn(api, conversation_id, "Again?"))
            assert await part_prev(api, made[-1]["id"]) == made[-2]["id"]  # found by the lookup, as before
            assert len(asked) == 1
            asked.clear()
        named = Keeping.named
        monkeypatch.setattr(Keeping, "named", lambda self, final: None)  # an old worker's turn names nothing
        made.append(await checked_turn(api, conversation_id, "From an old worker?"))
        monkeypatch.setattr(Keeping, "named", named)
        made.append(await checked_turn(api, conversation_id, "And now?"))  # after the last named turn
        assert await part_prev(api, made[-1]["id"]) == made[-3]["id"] and asked == []
        first = (await conversation_items(api, conversation_id))[1]["id"]  # the first turn's input
        assert (await call(api, "DELETE", f"/v1/conversations/{conversation_id}/items/{first}"))[0] == 200
        made.append(await checked_turn(api, conversation_id, "After a deletion?"))  # the name no longer holds
        assert await part_prev(api, made[-1]["id"]) is None and asked == [made[-2]["output"][0]["id"]]  # nor lookup
        assert (await call(api, "DELETE", f"/v1/responses/{made[-1]['id']}"))[0] == 200
        made.append(await checked_turn(api, conversation_id, "After its response went?"))  # named, gone: whole
        assert await part_prev(api, made[-1]["id"]) is None and len(asked) == 1
        made.append(await checked_turn(api, conversation_id, "Then?"))
        assert await part_prev(api, made[-1]["id"]) == made[-2]["id"] and len(asked) == 1


@pytest.mark.parametrize("store", STORES)
async def test_a_long_conversation_takes_store_space_linear_in_its_turns(tmp_path: Path, store: str) -> None:
    """50 turns of 2.5 KB answers in a conversation: each response's input items are the conversation as it was
    (its items before the turn, then the turn's input), and the store holds a few times the turns' own size, not
    the 3.7 MiB of a record per turn holding its whole conversation; the key's daily storage budget is charged
    what is stored (the conversation's items, and the responses' parts)."""
    async with api_on(store, tmp_path, answering(ANSWER), stored_bytes_per_key_per_day=10**9) as api:
        conversation_id = await new_conversation(api, "I live in Paris.")
        made, seen = [], {}
        for i in range(50):
            before = await conversation_items(api, conversation_id) if i in (0, 1, 25, 49) else None
            made.append(await turn(api, conversation_id, f"Question {i}?"))
            if before is not None:
                seen[made[-1]["id"]] = before
        for response_id, before in seen.items():
            items = await listed(api, response_id)
            assert items[:-1] == before and items[-1]["content"][0]["text"].startswith("Question"), response_id
        last = await listed(api, made[-1]["id"])
        assert len(last) == 100 and [item["role"] for item in last] == ["user"] + ["user", "assistant"] * 49 + ["user"]
        own = sum(len(json.dumps(r, separators=(",", ":")).encode()) for r in made) + sum(
            len(json.dumps(item, separators=(",", ":")).encode()) for item in last if item["role"] == "user")
        stored = await stored_bytes(api, await key_id_of(api))
        print(f"{store}: a conversation of 50 turns stored as {stored} bytes")
        assert stored < 3 * own, f"{stored} bytes stored for turns of about {own} bytes"
        conversation = await api.ctx.conversations.get(await key_id_of(api), conversation_id)
        charged = await stored_today(api) - conversation.size
        assert stored - 5 * 50 <= charged <= stored, (charged, stored)  # Redis: and its moved parts' marks
        assert await part_prev(api, made[0]["id"]) is None  # the first turn holds its (short) conversation whole
        assert await part_prev(api, made[-1]["id"]) == made[-2]["id"]


@pytest.mark.parametrize("store", STORES)
async def test_a_conversations_responses_read_as_they_were_whatever_changes_after(tmp_path: Path, store: str) -> None:
    """Items added to the conversation between turns are in the next response's input items; deleting an item of the
    conversation, a response in its middle or the conversation itself changes no response's input items; a turn
    after an item was deleted is answered and stored with the conversation as it is then; ``previous_response_id``
    naming a response of the conversation continues it with its conversation."""
    miner = answering("Noted.")
    async with api_on(store, tmp_path, miner) as api:
        conversation_id = await new_conversation(api, "I live in Paris.")
        made = [await turn(api, conversation_id, f"Question {i}?") for i in range(3)]
        status, added = await call(api, "POST", f"/v1/conversations/{conversation_id}/items", {"items": [
            {"type": "message", "role": "user", "content": "Also: I like tea."}]})
        assert status == 200, added
        made.append(await turn(api, conversation_id, "Question 3?"))
        assert await part_prev(api, made[3]["id"]) == made[2]["id"]
        assert [m["content"] for m in miner.bodies[-1]["messages"]][-3:] == [
            "Noted.", [{"type": "text", "text": "Also: I like tea."}], "Question 3?"]
        read = {r["id"]: await listed(api, r["id"]) for r in made}
        assert [i["id"] for i in read[made[3]["id"]]] == [i["id"] for i in await conversation_items(
            api, conversation_id)][:-1]
        first_item = read[made[0]["id"]][0]["id"]
        assert (await call(api, "DELETE", f"/v1/conversations/{conversation_id}/items/{first_item}"))[0] == 200
        made.append(await turn(api, conversation_id, "Question 4?"))  # the conversation changed: stored whole
        assert await part_prev(api, made[4]["id"]) is None
        read[made[4]["id"]] = await listed(api, made[4]["id"])
        assert first_item not in [i["id"] for i in read[made[4]["id"]]] and len(read[made[4]["id"]]) == 10
        made.append(await turn(api, conversation_id, "Question 5?"))
        assert await part_prev(api, made[5]["id"]) == made[4]["id"]
        read[made[5]["id"]] = await listed(api, made[5]["id"])
        assert (await call(api, "DELETE", f"/v1/responses/{made[2]['id']}"))[0] == 200
        assert (await call(api, "DELETE", f"/v1/conversations/{conversation_id}"))[0] == 200
        for response in made:
            if response["id"] != made[2]["id"]:
                assert await listed(api, response["id"]) == read[response["id"]], response["id"]
                status, got = await call(api, "GET", f"/v1/responses/{response['id']}")
                assert status == 200 and got["output"] == response["output"], got
        status, went_on = await call(api, "POST", "/v1/responses", {"model": "default", "input": "And now?",
                                                                    "previous_response_id": made[3]["id"]})
        assert status == 200 and went_on["store"] is True, went_on
        assert (await listed(api, went_on["id"]))[:-1] == read[made[3]["id"]] + made[3]["output"]
        assert len(miner.bodies[-1]["messages"]) == len(read[made[3]["id"]]) + 2


@pytest.mark.parametrize("store", STORES)
async def test_a_background_turn_in_a_conversation_reads_its_conversation(tmp_path: Path, store: str) -> None:
    """A streamed turn and a background turn of a conversation are stored as parts after its last stored turn (the
    background one settled with its answer, and continued in turn); a turn whose last stored turn is deleted as it
    is answered is stored whole."""
    miner = Script([(0.3, d) for d in sse(chunk("Later."), chunk(finish="stop"))])
    async with api_on(store, tmp_path, miner) as api:
        client = openai_client(api)
        conversation_id = await new_conversation(api, "I live in Paris.")
        made = [await turn(api, conversation_id, f"Question {i}?") for i in range(2)]
        async with client.responses.stream(model="default", input="Streamed?", conversation=conversation_id) as s:
            streamed = await s.get_final_response()
        assert await part_prev(api, streamed.id) == made[-1]["id"]
        queued = await client.responses.create(model="default", input="Slowly?", background=True,
                                               conversation=conversation_id)
        assert await part_prev(api, queued.id) == streamed.id
        done = await polled(client, queued)
        assert (done.status, done.output_text) == ("completed", "Later.")
        assert len(await listed(api, queued.id)) == 8
        asked = asyncio.ensure_future(client.responses.create(model="default", input="Again?",
                                                              conversation=conversation_id))
        await asyncio.sleep(0.15)
        assert (await call(api, "DELETE", f"/v1/responses/{queued.id}"))[0] == 200
        answered = await asyncio.wait_for(asked, 10)
        assert answered.to_dict()["store"] is True
        assert await part_prev(api, answered.id) is None
        assert [i["id"] for i in await listed(api, answered.id)][:-1] == [
            i["id"] for i in await conversation_items(api, conversation_id)][:-2]


@pytest.mark.parametrize("store", STORES)
async def test_a_background_turn_whose_last_stored_turn_goes_as_it_is_queued_is_stored_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    """The conversation's last stored turn deleted after a background turn read the conversation and before its
    pending record is written (the store refuses the part: its previous response is gone): the turn is queued all the
    same, answered, and stored whole, its input items the conversation exactly as it was; the next turn continues
    it. Before the fallback the request failed, or its record named the deleted response and read as unknown."""
    miner = answering("Later.")
    async with api_on(store, tmp_path, miner) as api:
        client = openai_client(api)
        conversation_id = await new_conversation(api, "I live in Paris.")
        made = [await turn(api, conversation_id, f"Question {i}?") for i in range(2)]
        before = await conversation_items(api, conversation_id)
        responses, put = api.ctx.responses, api.ctx.responses.put
        deleted: list[str] = []

        async def deleted_first(owner: str, response_id: str, data: str, **kw: Any) -> bool:
            """The pending record's first write: the response it continues is deleted just before it."""
            if kw.get("pending") and not deleted:
                deleted.append(prev_of(data) or "")
                assert await responses.delete(owner, made[-1]["id"])
            return await put(owner, response_id, data, **kw)

        monkeypatch.setattr(responses, "put", deleted_first)
        queued = await client.responses.create(model="default", input="Slowly?", background=True,
                                               conversation=conversation_id)
        monkeypatch.setattr(responses, "put", put)
        assert deleted == [made[-1]["id"]]  # its part was to continue the deleted turn
        done = await polled(client, queued)
        assert (done.status, done.output_text, done.to_dict()["store"]) == ("completed", "Later.", True)
        assert await part_prev(api, queued.id) is None
        assert await listed(api, queued.id) == before + [(await listed(api, queued.id))[-1]]
        assert (await listed(api, queued.id))[-1]["content"] == [{"type": "input_text", "text": "Slowly?"}]
        assert (await call(api, "GET", f"/v1/responses/{made[-1]['id']}"))[0] == 404
        after = await turn(api, conversation_id, "And then?")
        assert await part_prev(api, after["id"]) == queued.id
        assert (await listed(api, after["id"]))[:-1] == (await conversation_items(api, conversation_id))[:-2]
