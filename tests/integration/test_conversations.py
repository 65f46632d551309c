"""OpenAI's Conversations API through the real API app and the OpenAI SDK's own client and types: the
conversation and item routes, ``conversation`` on ``POST /v1/responses`` (OpenAI's "conversation state"
guide), and the Agents SDK's ``OpenAIConversationsSession``.

A scripted miner records what it was sent: a response naming a conversation reaches the miners as the
conversation's items, then its own input; the input and the answer are then the conversation's."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from loguru import logger
from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItem
from openai.types.conversations.conversation_item_list import ConversationItemList
from openai.types.responses import Response
from pydantic import TypeAdapter

from api import responses_background
from shared.store import conversations as conversation_store
from shared.store.base import hash_key
from tests.helpers import (
    ApiUnderTest,
    Script,
    api_with_miners,
    apis_on_one_store,
    call,
    chunk,
    failing_appends,
    log_lines,
    openai_client,
    paced,
    sse,
    stream_faults,
    wait_until,
)
from tests.store.conftest import conversations_of, drop_keys, redis_url

ITEM: TypeAdapter[Any] = TypeAdapter(ConversationItem)
TIME = {"type": "function", "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def answering(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


def said(role: str, text: str) -> dict[str, str]:
    return {"type": "message", "role": role, "content": text}


def sent_messages(script: Script) -> list[tuple[str, Any]]:
    """(role, content) of each message the miner was last sent."""
    return [(m["role"], m.get("content")) for m in script.bodies[-1]["messages"]]


def sent_texts(body: dict[str, Any]) -> list[str]:
    """The text of each message a miner was sent (a string, or its one text part)."""
    return [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in body["messages"]]


def texts(items: list[Any]) -> list[str]:
    return [item.content[0].text for item in items]



async def test_a_conversation_and_its_items_as_the_sdk_calls_them(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    made = await client.conversations.create(items=[said("user", "one"), said("assistant", "two")],
                                             metadata={"topic": "numbers"})
    Conversation.model_validate(made.model_dump())
    assert made.id.startswith("conv_") and made.metadata == {"topic": "numbers"}
    assert (await client.conversations.retrieve(made.id)).model_dump() == made.model_dump()
    added = await client.conversations.items.create(made.id, items=[said("user", "three"), {
        "role": "user", "content": [{"type": "input_text", "text": "four"}]}])
    ConversationItemList.model_validate(added.model_dump())
    assert texts(added.data) == ["three", "four"] and added.first_id == added.data[0].id
    newest_first = [item async for item in client.conversations.items.list(made.id, limit=3)]  # the SDK pages
    assert texts(newest_first) == ["four", "three", "two", "one"]
    for item in newest_first:
        ITEM.validate_python(item.model_dump())
    status, page = await call(honest, "GET", f"/v1/conversations/{made.id}/items?order=asc&limit=2"
                                             f"&after={newest_first[-1].id}")
    assert status == 200 and [i["content"][0]["text"] for i in page["data"]] == ["two", "three"] and page["has_more"]
    one = await client.conversations.items.retrieve(newest_first[1].id, conversation_id=made.id)
    assert one.id == newest_first[1].id and one.content[0].text == "three"  # type: ignore[union-attr]
    after_delete = await client.conversations.items.delete(one.id, conversation_id=made.id)
    assert after_delete.id == made.id and after_delete.object == "conversation"
    assert texts([i async for i in client.conversations.items.list(made.id, order="asc")]) == ["one", "two", "four"]
    updated = await client.conversations.update(made.id, metadata={"topic": "fewer"})
    assert updated.metadata == {"topic": "fewer"} and updated.created_at == made.created_at
    deleted = await client.conversations.delete(made.id)
    ConversationDeletedResource.model_validate(deleted.model_dump())
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "conversation.deleted")
    for gone in (client.conversations.retrieve(made.id), client.conversations.delete(made.id),
                 client.conversations.items.list(made.id)):
        with pytest.raises(openai.NotFoundError) as e:
            await gone
        assert e.value.code == "conversation_not_found"


async def test_an_empty_page_of_items_is_openais_with_null_ids_and_the_sdks_pager_stops(
        honest: ApiUnderTest) -> None:
    """An empty conversation's items (and a page past the last) list ``first_id`` and ``last_id`` as ``null``, as
    OpenAI's lists do when empty: the SDK's pager type (``ConversationCursorPage``) has no ``first_id`` and an
    optional ``last_id``, and stops there (``ConversationItemList``, whose ``first_id`` is a str, is what adding
    items answers: never empty)."""
    client = openai_client(honest)
    conversation = await client.conversations.create()
    page = await client.conversations.items.list(conversation.id)
    assert (page.data, page.has_more, page.last_id, page.has_next_page()) == ([], False, None, False)
    assert [item async for item in client.conversations.items.list(conversation.id)] == []
    status, body = await call(honest, "GET", f"/v1/conversations/{conversation.id}/items")
    assert status == 200 and body == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                      "has_more": False}
    await client.conversations.items.create(conversation.id, items=[said("user", "Hi")])  # type: ignore[list-item]
    last = (await client.conversations.items.list(conversation.id)).data[-1].id
    past = await client.conversations.items.list(conversation.id, after=last)
    assert (past.data, past.last_id, past.has_next_page()) == ([], None, False)


async def test_two_turns_by_conversation_streamed_and_not(tmp_path: Path) -> None:
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        conversation = await client.conversations.create(items=[said("user", "I live in Paris.")])
        first = await client.responses.create(model="default", instructions="Be brief.", input="My name is Ada.",
                                              conversation=conversation.id)
        assert first.conversation is not None and first.conversation.id == conversation.id
        assert sent_messages(miner) == [("system", "Be brief."),
                                        ("user", [{"type": "text", "text": "I live in Paris."}]),
                                        ("user", "My name is Ada.")]
        async with client.responses.stream(model="default", input="Who am I?",
                                           conversation={"id": conversation.id}) as s:
            second = await s.get_final_response()
        assert second.output_text == "Noted." and second.conversation.id == conversation.id  # type: ignore[union-attr]
        assert [role for role, _ in sent_messages(miner)] == ["user", "user", "assistant", "user"]
        assert sent_messages(miner)[2:] == [("assistant", "Noted."), ("user", "Who am I?")]
        items = [i async for i in client.conversations.items.list(conversation.id, order="asc")]
        assert texts(items) == ["I live in Paris.", "My name is Ada.", "Noted.", "Who am I?", "Noted."]
        assert items[2].id == first.output[0].id  # the answer as it was sent, by its id
        # the responses themselves are stored as usual: their input items are the whole conversation
        assert len([i async for i in client.responses.input_items.list(second.id)]) == 4


async def test_a_tool_round_trip_by_conversation(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    conversation = await client.conversations.create()
    first = await client.responses.create(model="default", input="What time is it in Paris?", tools=[TIME],
                                          conversation=conversation.id, store=False)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_time"] and first.store is False  # type: ignore[attr-defined]
    second = await client.responses.create(model="default", conversation=conversation.id, tools=[TIME], input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "10:00"}])
    assert second.status == "completed"
    items = [i async for i in client.conversations.items.list(conversation.id, order="asc")]
    assert [i.type for i in items][:3] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == calls[0].call_id  # type: ignore[union-attr]
    for item in items:
        ITEM.validate_python(item.model_dump())


async def test_what_is_unknown_or_not_yours_or_badly_shaped_is_a_4xx(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    mine = await client.conversations.create(items=[said("user", "Hi")])
    earlier = await client.responses.create(model="default", input="Hi")
    other_key, _ = await honest.ctx.store.create_key(1000)
    other = openai_client(honest, key=other_key)
    for attempt in (other.conversations.retrieve(mine.id), other.conversations.delete(mine.id),
                    other.conversations.update(mine.id, metadata={}),
                    other.conversations.items.create(mine.id, items=[said("user", "x")]),
                    client.conversations.retrieve("conv_unknown"), client.conversations.retrieve("conv_a:items")):
        with pytest.raises(openai.NotFoundError) as e:
            await attempt
        assert e.value.code == "conversation_not_found"
    for conversation in (mine.id, "conv_unknown", {"id": "nope:*"}):
        with pytest.raises(openai.BadRequestError) as e:
            await other.responses.create(model="default", input="Hi", conversation=conversation)  # type: ignore[arg-type]
        assert e.value.param == "conversation" and e.value.code == "conversation_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.create(model="default", input="Hi", conversation=mine.id,
                                      previous_response_id=earlier.id)
    assert e.value.param == "conversation" and "Mutually exclusive" in e.value.message
    item = (await client.conversations.items.list(mine.id)).data[0]
    with pytest.raises(openai.NotFoundError) as e:
        await client.conversations.items.retrieve("msg_unknown", conversation_id=mine.id)
    assert e.value.code == "item_not_found"
    path = f"/v1/conversations/{mine.id}"
    for method, where, body, param in (
            ("POST", "/v1/conversations", {"items": [said("user", "x")] * 21}, "items"),
            ("POST", "/v1/conversations", {"items": [{"type": "computer_call"}]}, "items.0.type"),
            ("POST", "/v1/conversations", {"items": [{"type": "item_reference", "id": 7}]}, "items.0.id"),
            ("POST", "/v1/conversations", {"metadata": {str(n): "v" for n in range(17)}}, "metadata"),
            ("POST", "/v1/conversations", {"metadata": {"k": 1}}, "metadata.k"),
            ("POST", "/v1/conversations", {"metadata": {"k" * 65: "v"}}, "metadata"),  # not metadata.kkk....[key]
            ("POST", "/v1/conversations", {"metadata": {"k": "v" * 513}}, "metadata.k"),
            ("POST", "/v1/responses", {"input": "Hi", "metadata": {"k" * 65: "v"}}, "metadata"),  # as OpenAI's
            ("POST", "/v1/responses", {"input": "Hi", "metadata": {"k": "v" * 513}}, "metadata.k"),
            ("POST", "/v1/conversations", [1], None),
            ("POST", f"{path}/items", {"items": []}, "items"),
            ("POST", f"{path}/items", {"items": [{"role": "user"}]}, "items.0.content"),
            ("POST", f"{path}/items", {"items": ["hi"]}, "items.0"),
            ("POST", f"{path}/items?include=nope", {"items": [said("user", "x")]}, "include.0"),
            ("POST", path, {}, "metadata"),
            ("GET", f"{path}/items?limit=0", None, "limit"),
            ("GET", f"{path}/items?order=up", None, "order"),
            ("GET", f"{path}/items?after=msg_nope", None, "after"),
            ("GET", f"{path}/items/{item.id}?include=nope", None, "include.0")):
        status, got = await call(honest, method, where, body)
        assert status == 400 and got["error"]["param"] == param, (where, body, got)
        assert got["error"]["type"] == "invalid_request_error"
    assert len((await client.conversations.items.list(mine.id)).data) == 1  # nothing refused was added
    async with aiohttp.ClientSession() as s, s.post(honest.url + "/v1/conversations",
                                                    headers={"Authorization": f"Bearer {honest.key}"}) as r:
        assert r.status == 200 and (await r.json())["object"] == "conversation"  # no body: an empty one


async def test_retention_zero_serves_no_conversation(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, responses_retention_seconds=0) as api:
        client = openai_client(api)
        for attempt in (client.conversations.create(), client.conversations.retrieve("conv_1"),
                        client.conversations.items.create("conv_1", items=[said("user", "x")])):
            with pytest.raises(openai.NotFoundError) as e:
                await attempt
            assert "RESPONSES_RETENTION_SECONDS is 0" in e.value.message
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="default", input="Hi", conversation="conv_1")
        assert e.value.param == "conversation" and "stores no conversations" in e.value.message


async def test_a_conversation_expires_after_its_last_write(tmp_path: Path) -> None:
    """Read past its first write's retention, a conversation written to since is still there; past its last
    write's, it is gone. Timed from the moments the calls returned (a loaded machine's slow call once read as
    expired with 0.25 s steps)."""
    retention = 2.0
    async with api_with_miners(tmp_path, {}, honest={1}, responses_retention_seconds=retention) as api:
        client = openai_client(api)
        made = await client.conversations.create(items=[said("user", "Hi")])
        first = time.monotonic()
        await asyncio.sleep(retention / 2)
        await client.conversations.items.create(made.id, items=[said("user", "still here")])  # refreshed
        last = time.monotonic()
        await asyncio.sleep(max(0.0, first + retention + 0.3 - time.monotonic()))  # past the first write's expiry
        assert time.monotonic() < last + retention, "the machine was too slow to tell the two expiries apart"
        assert len((await client.conversations.items.list(made.id)).data) == 2
        await asyncio.sleep(max(0.0, last + retention + 0.5 - time.monotonic()))
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(made.id)
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="default", input="Again", conversation=made.id)


async def test_a_conversation_is_bounded_in_size(honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversation_store, "MAX_CONVERSATION_BYTES", 1500)
    client = openai_client(honest)
    with pytest.raises(openai.BadRequestError) as e:
        await client.conversations.create(items=[said("user", "x" * 2000)])
    assert e.value.param == "items" and "over its bound of 1500" in e.value.message
    made = await client.conversations.create(items=[said("user", "x" * 600)])
    with pytest.raises(openai.BadRequestError) as e:
        await client.conversations.items.create(made.id, items=[said("user", "y" * 500), said("user", "z" * 500)])
    assert e.value.param == "items" and "start a new conversation" in e.value.message
    assert len((await client.conversations.items.list(made.id)).data) == 1  # all or none
    answered = await client.responses.create(model="default", input="y" * 500, conversation=made.id)
    assert answered.status == "completed"  # its answer may take it past the bound: the next turn is refused
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.create(model="default", input="z" * 500, conversation=made.id)
    assert e.value.param == "conversation" and "over its bound" in e.value.message


async def test_concurrent_appends_lose_nothing(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    made = await client.conversations.create()
    await asyncio.gather(*(openai_client(honest).conversations.items.create(
        made.id, items=[said("user", f"{n}a"), said("user", f"{n}b")]) for n in range(10)))
    await asyncio.gather(*(openai_client(honest).responses.create(model="default", input=f"turn {n}",
                                                                  conversation=made.id) for n in range(3)))
    items = [i async for i in client.conversations.items.list(made.id, order="asc", limit=100)]
    said_texts = texts(items)
    assert sorted(t for t in said_texts if t[0].isdigit()) == sorted(f"{n}{s}" for n in range(10) for s in "ab")
    for n in range(10):
        assert said_texts.index(f"{n}b") == said_texts.index(f"{n}a") + 1
    assert sorted(t for t in said_texts if t.startswith("turn")) == ["turn 0", "turn 1", "turn 2"]
    assert len(items) == 20 + 3 * 2  # each turn's input and answer


async def test_deleting_a_key_deletes_its_conversations(honest: ApiUnderTest) -> None:
    doomed_key, record = await honest.ctx.store.create_key(1000)
    made = await openai_client(honest, key=doomed_key).conversations.create(items=[said("user", "Hi")])
    async with aiohttp.ClientSession() as s, s.delete(f"{honest.url}/api_management/delete-api-key/{doomed_key}",
                                                      headers={"admin-key": "admin-secret-for-tests"}) as r:
        assert r.status == 200, await r.text()
    assert await honest.ctx.conversations.get(record.id, made.id) is None


async def delete_key(api: ApiUnderTest, secret: str) -> None:
    """Delete a key as an admin does, on ``api``'s host."""
    async with aiohttp.ClientSession() as s, s.delete(f"{api.url}/api_management/delete-api-key/{secret}",
                                                      headers={"admin-key": "admin-secret-for-tests"}) as r:
        assert r.status == 200, await r.text()


@pytest.mark.parametrize(("write", "deleted_on"), [("create", "another host"), ("add items", "this host")])
@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_conversation_written_as_its_key_is_deleted_is_a_401_and_kept_nowhere(
        tmp_path: Path, store: str, write: str, deleted_on: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of a key whose write reached the store only after an admin deleted the key (on this host, or on
    another sharing the store: two API processes on one SQLite file, or two hosts on one Redis): a conversation it
    created was kept its usual day, though no key could ever read it, and said made; items it added were a 404.
    Nothing is kept, and it is the 401 of a deleted key, as the same request sent a moment later is answered."""
    namespace = f"test-deleted-{secrets.token_hex(6)}" if store == "redis" else None
    if namespace is not None:
        redis_url()  # skipped without a Redis
    try:
        async with api_with_miners(tmp_path, {1: answering("Hi.")}, redis_namespace=namespace) as here, \
                api_with_miners(tmp_path, {1: answering("Hi.")}, redis_namespace=namespace) as other:
            key_id = (await here.ctx.store.get_key(hash_key(here.key))).id
            client = openai_client(here)
            made = await client.conversations.create(items=[said("user", "Hi")])
            method = "create" if write == "create" else "append"
            real, reached, go = getattr(here.ctx.conversations, method), asyncio.Event(), asyncio.Event()

            async def late(*args: Any, **kwargs: Any) -> Any:  # a store slow enough for the delete to come first
                reached.set()
                await go.wait()
                return await real(*args, **kwargs)

            monkeypatch.setattr(here.ctx.conversations, method, late)
            secret = [said("user", "My account number is 1234")]
            asked = asyncio.ensure_future(client.conversations.create(items=secret) if write == "create" else
                                          client.conversations.items.create(made.id, items=secret))
            await asyncio.wait_for(reached.wait(), 5)
            await delete_key(here if deleted_on == "this host" else other, here.key)
            go.set()
            with pytest.raises(openai.AuthenticationError) as e:
                await asked
            assert e.value.code == "invalid_api_key"
            for host in (here, other):
                assert await conversations_of(host.ctx.conversations, key_id) == []
    finally:
        if namespace is not None:
            redis = aioredis.from_url(redis_url())
            await drop_keys(redis, namespace)
            await redis.aclose()


@pytest.mark.redis
async def test_a_background_turn_answered_after_its_key_was_deleted_leaves_no_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A background response naming a conversation, whose key is deleted while its miner answers (on Redis: a
    SQLite file keeps no fence). Its turn found the conversation gone and its record refused, and was withdrawn:
    the withdrawal's fence (``{ns}:conversation:{key id}:{conversation id}:fence:{response id}``) was left for the
    retention, naming the deleted key's conversation and response. Nothing of the key is left."""
    namespace = f"test-deleted-{secrets.token_hex(6)}"
    redis_url()  # skipped without a Redis
    monkeypatch.setattr(responses_background, "WATCH_EVERY_S", 60.0)  # its answer comes first, as a quick one's does
    miner = Script([(0.3, d) for d in sse(chunk("Late."), chunk(finish="stop"))])
    try:
        async with api_with_miners(tmp_path, {1: miner}, redis_namespace=namespace) as here:
            key_id = (await here.ctx.store.get_key(hash_key(here.key))).id
            client = openai_client(here)
            made = await client.conversations.create(items=[said("user", "Hi")])
            await client.responses.create(model="default", input="Hi", conversation=made.id, background=True)
            await wait_until(lambda: miner.active > 0, 5)
            await delete_key(here, here.key)
            await wait_until(lambda: not here.ctx.running_responses, 10)
            assert miner.calls == 1
            assert await conversations_of(here.ctx.conversations, key_id) == []
    finally:
        redis = aioredis.from_url(redis_url())
        await drop_keys(redis, namespace)
        await redis.aclose()


async def test_the_agents_sdks_conversations_session_runs_two_turns(tmp_path: Path, loopback_only: None) -> None:
    """``OpenAIConversationsSession``: the Runner reads the session's items, sends them with the new input,
    then adds the input and the answer to the conversation."""
    from agents import Agent, OpenAIConversationsSession, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        agent = Agent(name="Assistant", instructions="Be brief.",
                      model=OpenAIResponsesModel(model="default", openai_client=client))
        session = OpenAIConversationsSession(openai_client=client)
        first = await Runner.run(agent, "My name is Ada.", session=session)
        second = await Runner.run(agent, "What is my name?", session=session)
        assert first.final_output == second.final_output == "Noted."
        assert [role for role, _ in sent_messages(miner)] == ["system", "user", "assistant", "user"]
        assert session.session_id.startswith("conv_")
        items = await session.get_items()
        assert [item.get("role") for item in items] == ["user", "assistant", "user", "assistant"]
        conversation_id = session.session_id
        await session.clear_session()  # deletes the conversation
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(conversation_id)


async def test_a_conversation_store_that_fails_to_read_is_a_503_before_any_miner_is_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conversation's items are read before the miners are asked: a store already down then is the 503, and
    no miner's call is spent on an answer that could not be added."""
    from shared.store.base import StoreUnavailable

    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        made = await client.conversations.create(items=[said("user", "Hi")])

        async def down(*_: Any, **__: Any) -> Any:
            raise StoreUnavailable("redis conversations: ConnectionError: gone")

        monkeypatch.setattr(api.ctx.conversations, "items", down)
        monkeypatch.setattr(api.ctx.conversations, "turn_items", down)  # a response's turn reads it so
        for attempt in (client.responses.create(model="default", input="Again", conversation=made.id),
                        client.responses.create(model="default", input="Again", conversation=made.id, stream=True),
                        client.conversations.items.list(made.id)):
            with pytest.raises(openai.InternalServerError) as e:
                await attempt
            assert e.value.status_code == 503 and e.value.code == "store_unavailable"
            assert "The conversation store is unavailable" in e.value.message, "it named the key store, which answered"
        assert miner.bodies == []


@pytest.mark.parametrize("stream", [False, True], ids=["object", "streamed"])
@pytest.mark.parametrize("landed", [False, True], ids=["refused", "landed but reported failed"])
async def test_a_turn_the_store_cannot_take_fails_and_the_conversation_stays_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, landed: bool, stream: bool) -> None:
    """The store fails the turn's write three times: the turn was missing from the conversation while the caller
    got a 200 (a WARNING only), and its next turn ran on a conversation that silently lacked it (an agent forgot
    it). The response now fails: a 503 ``store_unavailable`` saying the answer was not added and that sending the
    turn again is safe, or, streamed, ``response.failed`` with that error in place of ``response.completed``.
    Nothing of the turn stays (a write that landed though it was reported failed is taken out), the response is
    not stored, and the same turn sent again once the store is back leaves the conversation with it once."""
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        made = await client.conversations.create(items=[said("user", "Hi")])
        failed = failing_appends(api, monkeypatch, 3, landed=landed)
        lines, sink = log_lines("INFO")
        turn = {"x-request-id": f"failed-turn-{stream}-{landed}"}
        if stream:
            events = [e async for e in await client.responses.create(model="default", input="Hi again",
                                                                     conversation=made.id, stream=True,
                                                                     extra_headers=turn)]
            types = [e.type for e in events]
            assert types[-1] == "response.failed" and "response.completed" not in types, types
            assert stream_faults([e.model_dump(mode="json") for e in events]) == []  # its items done, as it says
            response = events[-1].response  # type: ignore[union-attr]
            # the SDK's code for it: store_unavailable (the 503's) is not among the SDK's codes of a response's error
            assert (response.status, response.error.code) == ("failed", "server_error")  # type: ignore[union-attr]
            Response.model_validate(response.model_dump(), strict=True)  # type: ignore[union-attr]
            message = response.error.message  # type: ignore[union-attr]
            assert response.output_text == "Noted." and response.to_dict()["store"] is False  # what was streamed
            with pytest.raises(openai.NotFoundError):  # not stored, completed or otherwise
                await client.responses.retrieve(response.id)
        else:
            with pytest.raises(openai.InternalServerError) as e:
                await client.responses.create(model="default", input="Hi again", conversation=made.id,
                                              extra_headers=turn)
            assert (e.value.status_code, e.value.code) == (503, "store_unavailable")
            assert e.value.response.headers["retry-after"] == "1"
            message = e.value.message
        # its access line says it failed (streamed, it said status=ok: the 200 went out before the turn failed)
        await wait_until(lambda: any(f"rid={turn['x-request-id']} " in line for line in lines), 5)
        logger.remove(sink)
        logged = [line for batch in lines for line in batch.splitlines() if f"rid={turn['x-request-id']} " in line]
        assert len(logged) == 1 and " status=store_unavailable " in logged[0], logged
        assert f"not added to conversation '{made.id}'" in message and "sending the same turn again is safe" in message
        assert len(failed) == 3 and len(set(failed)) == 1 and failed[0].startswith("resp_")  # one turn, asked thrice
        assert texts([i async for i in client.conversations.items.list(made.id, order="asc")]) == ["Hi"]
        again = await client.responses.create(model="default", input="Hi again", conversation=made.id)
        items = [i async for i in client.conversations.items.list(made.id, order="asc")]
        assert texts(items) == ["Hi", "Hi again", "Noted."] and items[-1].id == again.output[0].id
        assert len(miner.bodies) == 2


async def test_the_sdk_sends_a_turn_the_store_failed_again_and_the_conversation_has_it_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a client meets it: the OpenAI SDK retries a 503 (after its ``retry-after``), and the store back by then
    takes the turn; the write of the failed attempt, which landed, was taken out: the conversation holds the
    turn once."""
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        retrying = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=2, timeout=20)
        made = await retrying.conversations.create(items=[said("user", "Hi")])
        failed = failing_appends(api, monkeypatch, 3, landed=True)
        answered = await retrying.responses.create(model="default", input="Hi again", conversation=made.id)
        assert answered.status == "completed" and answered.output_text == "Noted." and len(failed) == 3
        assert len(miner.bodies) == 2  # the turn was answered twice: the first answer was not kept
        items = [i async for i in retrying.conversations.items.list(made.id, order="asc")]
        assert texts(items) == ["Hi", "Hi again", "Noted."] and items[-1].id == answered.output[0].id


@pytest.mark.parametrize("landed", [False, True], ids=["refused", "landed but reported failed"])
async def test_a_turn_the_store_fails_a_moment_is_added_once(honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch,
                                                             landed: bool) -> None:
    """The store away a moment as a turn ends (a Redis restart): the turn was lost from the conversation (a
    WARNING), and the next turn's model never saw it. The write is asked again, as a stored response's is;
    one that landed though it was reported failed (a timed-out Redis call) is not added twice."""
    client = openai_client(honest)
    made = await client.conversations.create(items=[said("user", "Hi")])
    failures = failing_appends(honest, monkeypatch, 1, landed=landed, noting="once")
    answered = await client.responses.create(model="default", input="Hi again", conversation=made.id)
    items = [i async for i in client.conversations.items.list(made.id, order="asc")]
    assert failures == [True]
    assert [i.type for i in items] == ["message", "message", "message"], [i.type for i in items]
    assert [i.role for i in items] == ["user", "user", "assistant"]
    assert items[-1].id == answered.output[0].id


async def test_items_sent_in_their_short_forms_are_listed_in_the_sdks_shapes(honest: ApiUnderTest) -> None:
    """An assistant's ``output_text`` part sent without ``annotations`` (as hand-written histories send it) is
    listed with ``annotations: []``, as the SDK's ``ConversationItem`` requires (without it the SDK's parsed part
    had no ``annotations`` at all); a reasoning item without ``summary`` or a ``web_search_call`` without
    ``action``, or an item whose ``status`` is none of OpenAI's, is the 400 naming the field, as OpenAI's, not an
    item no SDK type could read back."""
    client = openai_client(honest)
    written = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]}
    made = await client.conversations.create(items=[said("user", "Hi"), written])
    status, page = await call(honest, "GET", f"/v1/conversations/{made.id}/items?order=asc")
    assert status == 200
    ConversationItemList.model_validate(page)  # strictly: every item as the SDK types it
    assert page["data"][1]["content"] == [{"type": "output_text", "text": "Hello.", "annotations": []}]
    listed = [i async for i in client.conversations.items.list(made.id, order="asc")]
    assert listed[1].content[0].annotations == []  # type: ignore[union-attr]
    answered = await client.responses.create(model="default", input=[written, said("user", "Again")])
    inputs = [i async for i in client.responses.input_items.list(answered.id, order="asc")]
    assert inputs[0].content[0].annotations == []  # type: ignore[union-attr]  (a stored response's items too)
    for item, missing in (({"type": "reasoning", "id": "rs_1"}, "summary"),
                          ({"type": "web_search_call", "id": "ws_1", "status": "completed"}, "action"),
                          (said("user", "Hi") | {"status": "done"}, "status"),  # the SDK's types take three
                          ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}", "status": "ok"},
                           "status"),
                          ({"type": "web_search_call", "id": "ws_1", "status": "done", "action": {}}, "status")):
        for where in (f"/v1/conversations/{made.id}/items", "/v1/responses"):
            body = {"items": [item]} if "conversations" in where else {"input": [item, said("user", "x")]}
            status, got = await call(honest, "POST", where, body)
            place = "items.0" if "conversations" in where else "input.0"
            assert status == 400 and got["error"]["param"] == f"{place}.{missing}", (where, got)
    assert len((await client.conversations.items.list(made.id)).data) == 2  # nothing refused was added


async def assert_id_refused(api: ApiUnderTest, conversation_id: str, item: dict[str, Any]) -> None:
    """``item``'s id is the 400 naming its place, wherever an item comes: added to the conversation, in a new
    conversation's items, in a response's ``input``."""
    for where, body, param in ((f"/v1/conversations/{conversation_id}/items", {"items": [item]}, "items.0.id"),
                               ("/v1/conversations", {"items": [said("user", "a"), item]}, "items.1.id"),
                               ("/v1/responses", {"model": "default", "input": [item]}, "input.0.id")):
        status, got = await call(api, "POST", where, body)
        assert status == 400 and got["error"]["param"] == param, (where, got)


async def test_an_item_id_too_long_to_page_after_is_a_400_naming_it(honest: ApiUnderTest) -> None:
    """An id the caller gives an item is a page's ``after`` when it ends a page, and ``after`` takes 256
    characters: a longer one was kept, and the SDK's pager stopped halfway through the conversation on the 400
    naming ``after``. It is the 400 naming the item's id as it comes, nothing kept."""
    client = openai_client(honest)
    made = await client.conversations.create(items=[said("user", "one")])
    longest = {"type": "message", "role": "user", "content": "two", "id": "msg_" + "x" * 252}
    await client.conversations.items.create(made.id, items=[longest, said("user", "three")])
    listed = [i async for i in client.conversations.items.list(made.id, limit=1, order="asc")]  # each page after one
    assert texts(listed) == ["one", "two", "three"]
    too_long = longest | {"id": longest["id"] + "x"}
    await assert_id_refused(honest, made.id, too_long)
    assert len((await client.conversations.items.list(made.id)).data) == 3


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_turns_at_once_on_two_workers_each_stay_whole(tmp_path: Path, store: str) -> None:
    """Two turns of one conversation sent together, to two workers: each is answered with the conversation as it
    was when it came (neither sees the other's input), and each one's input and answer are added together, one
    turn after the other; the next turn is answered with, and stored as, all of it."""
    miner = answering("Noted.")
    async with apis_on_one_store(tmp_path, store, 2, miner) as (one, two):
        first, second = openai_client(one), openai_client(two, key=one.key)
        made = await first.conversations.create(items=[said("user", "Hi")])
        paced(miner, 0.3)  # both are being answered at once
        await asyncio.gather(first.responses.create(model="default", input="A", conversation=made.id),
                             second.responses.create(model="default", input="B", conversation=made.id))
        paced(miner, 0)
        assert sorted(sent_texts(b)[-1] for b in miner.bodies) == ["A", "B"]
        assert all(sent_texts(b)[:-1] == ["Hi"] for b in miner.bodies)  # neither saw the other
        items = texts([i async for i in first.conversations.items.list(made.id, order="asc")])
        assert items in (["Hi", "A", "Noted.", "B", "Noted."], ["Hi", "B", "Noted.", "A", "Noted."])
        third = await second.responses.create(model="default", input="C", conversation=made.id)
        assert sent_texts(miner.bodies[-1]) == items + ["C"]
        assert texts([i async for i in first.responses.input_items.list(third.id, order="asc")]) == items + ["C"]


async def test_an_orphan_output_in_a_conversation_is_a_400_naming_the_item_to_delete(honest: ApiUnderTest) -> None:
    """A conversation whose function_call item was deleted holds its output with no call: every turn on it is
    refused. The 400 names the output's item id and the route that deletes it (it named only the call id, and
    the items had to be listed to find which to delete); deleting that item, the next turn is answered."""
    client = openai_client(honest)
    call_item = {"type": "function_call", "call_id": "call_t", "name": "get_time", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_t", "output": "10:00", "id": "fco_time"}
    made = await client.conversations.create(items=[said("user", "Time?"), call_item, output])
    listed = [i async for i in client.conversations.items.list(made.id, order="asc")]
    await client.conversations.items.delete(listed[1].id, conversation_id=made.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="default", conversation=made.id, input="And now?")
    error = refused.value.body
    assert error["param"] == "conversation" and "call_t" in error["message"]  # type: ignore[index]
    assert f"DELETE /v1/conversations/{made.id}/items/fco_time" in error["message"]  # type: ignore[index]
    await client.conversations.items.delete("fco_time", conversation_id=made.id)
    answered = await client.responses.create(model="default", conversation=made.id, input="And now?")
    assert answered.status == "completed"


@pytest.mark.parametrize("item_id", [".", "..", "%2e", ".%2E", "a/b", "a?b", "a#b", "a\nb", "a\x00b"])
async def test_an_item_id_no_url_can_name_is_a_400_naming_it(honest: ApiUnderTest, item_id: str) -> None:
    """An item id the caller chooses is a path segment of the routes reading and deleting the item: ``.`` and
    ``..`` (the SDK refuses to build such a path; a server resolves it to another route), ``/``, ``?``, ``#``
    (a client that does not escape them asks another route) and control characters were kept, an item never to
    be read or deleted alone. Each is the 400 naming the id's place, nothing kept; a dot within an id is fine."""
    client = openai_client(honest)
    made = await client.conversations.create(items=[said("user", "one")])
    bad = said("user", "two") | {"id": item_id}
    await assert_id_refused(honest, made.id, bad)
    assert len((await client.conversations.items.list(made.id)).data) == 1
    dotted = said("user", "three") | {"id": "msg.v1..2"}
    await client.conversations.items.create(made.id, items=[dotted])
    got = await client.conversations.items.retrieve("msg.v1..2", conversation_id=made.id)
    assert got.id == "msg.v1..2"
    await client.conversations.items.delete("msg.v1..2", conversation_id=made.id)
