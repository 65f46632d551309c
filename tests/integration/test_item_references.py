"""``item_reference`` input items through the real API app and the OpenAI SDK: an item a stored response
added (its input or its output) is sent by id, and reaches the miners as the item itself; in a
conversation's items too. What is not stored, or is another key's, is OpenAI's 404 naming ``input``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from api import responses_state
from tests.helpers import ApiUnderTest, Script, api_with_miners, call, chunk, openai_client, sse


def answering(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


def sent_messages(script: Script) -> list[tuple[str, Any]]:
    """(role, content) of each message the miner was last sent."""
    return [(m["role"], m.get("content")) for m in script.bodies[-1]["messages"]]


def ref(item_id: str) -> dict[str, str]:
    return {"type": "item_reference", "id": item_id}


async def test_items_of_stored_responses_are_sent_by_reference_streamed_or_not(tmp_path: Path) -> None:
    """Manual context management, as OpenAI's guide has it: no ``previous_response_id``; earlier turns by id."""
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        first = await client.responses.create(model="default", input="My name is Ada.")
        said = [item async for item in client.responses.input_items.list(first.id)][0]
        answer = first.output[0]
        second = await client.responses.create(model="default", input=[
            ref(said.id), {"id": answer.id}, {"role": "user", "content": "My name?"}])  # the SDK's type is optional
        assert second.status == "completed" and second.previous_response_id is None
        assert sent_messages(miner) == [("user", [{"type": "text", "text": "My name is Ada."}]),
                                        ("assistant", "Noted."), ("user", "My name?")]
        # stored as the items themselves: listed, and continued, with no reference left in them
        listed = [item.model_dump(include={"id", "type", "role"}) async for item in
                  client.responses.input_items.list(second.id, order="asc")]
        assert listed[:2] == [{"id": said.id, "type": "message", "role": "user"},
                              {"id": answer.id, "type": "message", "role": "assistant"}]
        async with client.responses.stream(model="default", input=[ref(answer.id), {"role": "user", "content": "Ok"}],
                                           previous_response_id=second.id) as s:
            third = await s.get_final_response()
        assert third.status == "completed"
        assert [role for role, _ in sent_messages(miner)] == ["user", "assistant", "user", "assistant",
                                                              "assistant", "user"]
        # an item of the streamed response is found in its turn
        await client.responses.create(model="default", input=[ref(third.output[0].id), {"role": "user", "content": "?"}])
        assert sent_messages(miner)[0] == ("assistant", "Noted.")


async def test_a_function_call_and_its_output_by_reference(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    tool = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    first = await client.responses.create(model="default", input="What time is it in Paris?", tools=[tool])
    call = next(item for item in first.output if item.type == "function_call")
    answered = await client.responses.create(model="default", tools=[tool], input=[
        ref(call.id), {"type": "function_call_output", "call_id": call.call_id, "output": "10:00"}])
    assert answered.status == "completed"
    listed = [item async for item in client.responses.input_items.list(answered.id, order="asc")]
    assert [(item.type, item.id) for item in listed][0] == ("function_call", call.id)


async def test_what_is_not_stored_or_not_yours_is_a_404_naming_input(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    unstored = await client.responses.create(model="default", input="Hi", store=False)
    deleted = await client.responses.create(model="default", input="Hi")
    await client.responses.delete(deleted.id)
    mine = await client.responses.create(model="default", input="Hi")
    other_key, _ = await honest.ctx.store.create_key(1000)
    other = openai_client(honest, key=other_key)
    for item_id, asker in ((unstored.output[0].id, client), (deleted.output[0].id, client),
                           (mine.output[0].id, other), ("msg_unknown", client)):
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as e:
                await asker.responses.create(model="default", input=[ref(item_id), {"role": "user", "content": "?"}],
                                             stream=stream)
            assert e.value.param == "input" and e.value.type == "invalid_request_error"
            assert e.value.body["message"].startswith(f"Item with id '{item_id}' not found.")  # type: ignore[index]
    status, body = await post(honest, {"input": [{"type": "item_reference", "id": 5}]})
    assert status == 400 and body["error"]["param"] == "input.0.id"
    assert (await client.responses.create(model="default", input=[ref(mine.output[0].id)])).status == "completed"


async def test_one_request_reads_a_bounded_number_of_stored_responses(honest: ApiUnderTest,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stored response is up to a megabyte: a request naming items of many is refused, not read whole."""
    monkeypatch.setattr(responses_state, "MAX_REFERENCED_RESPONSES", 2)
    client = openai_client(honest)
    made = [await client.responses.create(model="default", input=f"Turn {n}") for n in range(3)]
    both = [ref(made[0].output[0].id), ref(made[1].output[0].id)]
    status, body = await post(honest, {"input": [*both, ref(made[2].output[0].id)]})
    assert status == 400 and body["error"]["param"] == "input" and "at most 2 stored responses" in body["error"]["message"]
    # two responses read, each item of them then known: its input item costs no further read
    said = [item async for item in client.responses.input_items.list(made[0].id)][0]
    assert (await client.responses.create(model="default", input=[*both, ref(said.id)])).status == "completed"


async def test_conversation_items_by_reference(honest: ApiUnderTest) -> None:
    """A conversation's items may be sent by reference: a stored response's, or the conversation's own."""
    client = openai_client(honest)
    first = await client.responses.create(model="default", input="Hi")
    made = await client.conversations.create(items=[ref(first.output[0].id)])
    items = (await client.conversations.items.list(made.id, order="asc")).data
    assert [(item.type, item.id, item.role) for item in items] == [("message", first.output[0].id, "assistant")]
    added = await client.conversations.items.create(made.id, items=[ref(items[0].id)])  # its own item, again
    assert [(item.role, item.content) for item in added.data] == [(items[0].role, items[0].content)]
    assert added.data[0].id != items[0].id  # an id of its own: reading or deleting by id names one item
    with pytest.raises(openai.NotFoundError) as e:
        await client.conversations.items.create(made.id, items=[ref("msg_unknown")])
    assert e.value.param == "items"
    assert len((await client.conversations.items.list(made.id)).data) == 2  # nothing refused was added
    await client.conversations.items.delete(added.data[0].id, conversation_id=made.id)
    assert [item.id for item in (await client.conversations.items.list(made.id)).data] == [items[0].id]
    answered = await client.responses.create(model="default", conversation=made.id, input=[ref(items[0].id)])
    assert answered.status == "completed"


async def post(api: ApiUnderTest, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return await call(api, "POST", "/v1/responses", {"model": "default", **body})


async def test_each_item_of_a_conversation_keeps_an_id_of_its_own(honest: ApiUnderTest) -> None:
    """An item sent again (by reference, or whole with its id) while the conversation already holds it is
    stored with a new id: listing, paging by ``after`` and deleting by id each name one item."""
    client = openai_client(honest)
    first = await client.responses.create(model="default", input="Hi")
    answer = first.output[0]
    again = await client.responses.create(model="default", previous_response_id=first.id, input=[
        ref(answer.id), answer.model_dump(exclude_none=True), {"role": "user", "content": "Again?"}])
    ids = [item.id async for item in client.responses.input_items.list(again.id, order="asc")]
    assert len(ids) == len(set(ids)) == 5 and ids[1] == answer.id  # the first, kept; its copies, renamed
    conversation = await client.conversations.create(items=[{"type": "message", "role": "user", "content": "a",
                                                             "id": "msg_same"}] * 2)
    await client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "user", "content": "b", "id": "msg_same"}])
    listed = (await client.conversations.items.list(conversation.id, order="asc")).data
    assert listed[0].id == "msg_same" and len({item.id for item in listed}) == 3
