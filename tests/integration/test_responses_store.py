"""Stored responses through the real API app and the OpenAI SDK: ``previous_response_id`` (OpenAI's own
multi-turn quickstart), ``store``, and ``GET``/``DELETE /v1/responses/{id}`` and its ``input_items``.

A scripted miner records what it was sent: a continued response reaches the miners as the whole
conversation, the new request's instructions first (the earlier ones are not carried over)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.responses import Response, ResponseItem
from pydantic import TypeAdapter

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
    sse,
    wait_until,
)

ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)
TIME = {"type": "function", "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def answering(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


def sent_messages(script: Script) -> list[tuple[str, Any]]:
    """(role, content) of each message the miner was last sent."""
    return [(m["role"], m.get("content")) for m in script.bodies[-1]["messages"]]



async def test_a_conversation_continues_by_previous_response_id_streamed_or_not(tmp_path: Path) -> None:
    miner = answering("Noted.")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        first = await client.responses.create(model="default", instructions="Be brief.", input="My name is Ada.")
        assert first.store is True and first.previous_response_id is None  # type: ignore[attr-defined]
        second = await client.responses.create(model="default", instructions="Be kind.", input="My name?",
                                               previous_response_id=first.id)
        assert second.previous_response_id == first.id
        assert sent_messages(miner) == [("system", "Be kind."), ("user", [{"type": "text", "text": "My name is Ada."}]),
                                        ("assistant", "Noted."), ("user", "My name?")]
        async with client.responses.stream(model="default", input="And again?", previous_response_id=second.id) as s:
            third = await s.get_final_response()
        assert third.previous_response_id == second.id and third.output_text == "Noted."
        assert [role for role, _ in sent_messages(miner)] == ["user", "assistant", "user", "assistant", "user"]
        # the streamed one is stored too, and continues in turn
        fourth = await client.responses.create(model="default", input="Last.", previous_response_id=third.id)
        assert len(sent_messages(miner)) == 7 and fourth.status == "completed"
        got = await client.responses.retrieve(third.id)
        Response.model_validate(got.model_dump())
        assert got.id == third.id and got.output_text == "Noted."


async def test_a_tool_round_trip_by_previous_response_id(honest: ApiUnderTest) -> None:
    """The Agents SDK's flow: the model calls a function; the caller sends only its output, naming the
    response that made the call."""
    client = openai_client(honest)
    first = await client.responses.create(model="default", input="What time is it in Paris?", tools=[TIME])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_time"]
    second = await client.responses.create(model="default", previous_response_id=first.id, tools=[TIME], input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "10:00"}])
    assert second.status == "completed"
    items = [item async for item in client.responses.input_items.list(second.id, order="asc")]
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == calls[0].call_id


async def test_what_is_not_stored_or_not_yours_cannot_be_continued(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    unstored = await client.responses.create(model="default", input="Hi", store=False)
    assert unstored.store is False  # type: ignore[attr-defined]
    mine = await client.responses.create(model="default", input="Hi")
    other_key, _ = await honest.ctx.store.create_key(1000)
    other = openai_client(honest, key=other_key)
    for response_id, asker in ((unstored.id, client), (mine.id, other), ("resp_unknown", client)):
        with pytest.raises(openai.BadRequestError) as e:
            await asker.responses.create(model="default", input="Again", previous_response_id=response_id)
        assert e.value.param == "previous_response_id" and e.value.type == "invalid_request_error"
        assert e.value.body["message"] == f"Previous response with id '{response_id}' not found."  # type: ignore[index]
    for attempt in (other.responses.retrieve(mine.id), other.responses.delete(mine.id),
                    other.responses.input_items.list(mine.id)):
        with pytest.raises(openai.NotFoundError) as e:
            await attempt
        assert e.value.code == "response_not_found"
    assert (await client.responses.retrieve(mine.id)).id == mine.id  # still there for its own key


async def test_delete_then_it_is_gone_everywhere(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    made = await client.responses.create(model="default", input="Hi")
    status, body = await call(honest, "DELETE", f"/v1/responses/{made.id}")
    assert (status, body) == (200, {"id": made.id, "object": "response.deleted", "deleted": True})
    for again in (client.responses.delete(made.id), client.responses.retrieve(made.id)):
        with pytest.raises(openai.NotFoundError):
            await again
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.create(model="default", input="Again", previous_response_id=made.id)
    assert e.value.param == "previous_response_id"


async def test_input_items_page_through_the_conversation(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: answering("Ok.")}) as api:
        client = openai_client(api)
        r = await client.responses.create(model="default", input="one")
        r = await client.responses.create(model="default", input="two", previous_response_id=r.id)
        r = await client.responses.create(model="default", input=[{"role": "user", "content": "three"}],
                                          previous_response_id=r.id)
        status, page = await call(api, "GET", f"/v1/responses/{r.id}/input_items?limit=2")
        assert status == 200 and page["object"] == "list" and page["has_more"] is True
        assert [i["content"][0]["text"] for i in page["data"]] == ["three", "Ok."]  # desc: the newest first
        assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][1]["id"])
        everything = [item async for item in client.responses.input_items.list(r.id, limit=2)]  # the SDK pages
        assert [i.content[0].text for i in everything] == ["three", "Ok.", "two", "Ok.", "one"]
        for item in everything:
            ITEM.validate_python(item.model_dump())
        status, page = await call(api, "GET", f"/v1/responses/{r.id}/input_items?order=asc&after={everything[-1].id}")
        assert [i["content"][0]["text"] for i in page["data"]] == ["Ok.", "two", "Ok.", "three"]
        assert page["has_more"] is False
        for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                             ("order=up", "order"), ("after=msg_nope", "after"), ("include=nope", "include.0")):
            status, body = await call(api, "GET", f"/v1/responses/{r.id}/input_items?{query}")
            assert status == 400 and body["error"]["param"] == param, (query, body)
            assert body["error"]["type"] == "invalid_request_error"


async def test_an_input_image_is_listed_with_its_detail(honest: ApiUnderTest) -> None:
    """The SDKs' ``ResponseInputImage`` requires ``detail``; one the caller left out is OpenAI's default, ``auto``
    (it was listed without one: the Node SDK's type was broken, the Python SDK's a validation error)."""
    image = "data:image/png;base64,iVBORw0KGgo="
    made = await openai_client(honest).responses.create(model="default", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": image},
        {"type": "input_image", "image_url": image, "detail": "low"}]}])
    status, page = await call(honest, "GET", f"/v1/responses/{made.id}/input_items")
    assert status == 200
    (item,) = page["data"]
    assert [p.get("detail") for p in item["content"]] == [None, "auto", "low"]
    ITEM.validate_python(item, strict=True)


async def test_a_response_expires_after_the_retention(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, responses_retention_seconds=0.3) as api:
        client = openai_client(api)
        made = await client.responses.create(model="default", input="Hi")
        assert (await client.responses.retrieve(made.id)).id == made.id
        await asyncio.sleep(0.4)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model="default", input="Again", previous_response_id=made.id)


async def test_retention_zero_stores_nothing_as_before(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, responses_retention_seconds=0) as api:
        client = openai_client(api)
        made = await client.responses.create(model="default", input="Hi")
        assert made.store is False and api.ctx.responses is None  # type: ignore[attr-defined]
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="default", input="Again", previous_response_id=made.id)
        assert e.value.param == "previous_response_id" and "RESPONSES_RETENTION_SECONDS is 0" in e.value.message
        for attempt in (client.responses.retrieve(made.id), client.responses.delete(made.id),
                        client.responses.input_items.list(made.id)):
            with pytest.raises(openai.NotFoundError) as e:
                await attempt
            assert e.value.code == "response_not_found" and "stores no responses" in e.value.message


async def test_a_response_over_the_size_bound_is_answered_not_stored(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responses_module, "MAX_STORED_BYTES", 3000)
    client = openai_client(honest)
    small = await client.responses.create(model="default", input="Hi")
    big = await client.responses.create(model="default", input="Hi " * 1000)
    async with client.responses.stream(model="default", input="Hi " * 1000) as s:
        streamed = await s.get_final_response()
    assert small.store is True and big.store is False and streamed.store is False  # type: ignore[attr-defined]
    assert big.status == streamed.status == "completed"
    for response_id in (big.id, streamed.id):
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response_id)
    assert (await client.responses.retrieve(small.id)).id == small.id


async def test_retrieve_refuses_to_stream(honest: ApiUnderTest) -> None:
    made = await openai_client(honest).responses.create(model="default", input="Hi")
    status, body = await call(honest, "GET", f"/v1/responses/{made.id}?stream=true")
    assert status == 400 and body["error"]["param"] == "stream"
    status, body = await call(honest, "GET", f"/v1/responses/{made.id}")
    assert status == 200 and body["id"] == made.id and body["store"] is True


async def test_the_next_turn_sent_at_once_finds_the_response_on_a_slow_store(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent sends its next turn the moment it has the answer, maybe to another worker or host: a
    record written after the answer went out (a store round trip later) was "not found" then."""
    real_put = honest.ctx.responses.put

    async def slow_put(*args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(0.2)  # a store far slower than any: the answer must wait for it
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(honest.ctx.responses, "put", slow_put)
    # each turn a client of its own: a new connection, as a request to another worker or host is (on one
    # kept-alive connection the server reads the next request only once the last one's handler is done)
    first = await openai_client(honest).responses.create(model="default", input="Hi")
    second = await openai_client(honest).responses.create(model="default", input="Again",
                                                          previous_response_id=first.id)
    async with openai_client(honest).responses.stream(model="default", input="And on",
                                                      previous_response_id=second.id) as s:
        third = await s.get_final_response()
    fourth = await openai_client(honest).responses.create(model="default", input="Last",
                                                          previous_response_id=third.id)
    assert fourth.status == "completed" and fourth.previous_response_id == third.id


@pytest.mark.parametrize("away", [1, 3], ids=["away a moment", "away"])
async def test_a_response_the_store_cannot_take_says_store_false_and_a_blip_is_waited_out(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch, away: int) -> None:
    """The store away as the answer ended (a Redis restart): the caller got ``store: true`` for a response that
    was not stored, and its next turn a "not found". A moment's absence is waited out (the write is asked
    again, 0.2 s apart); a longer one makes the answer say ``store: false``, streamed or not."""
    from shared.store.base import StoreUnavailable

    real_put, refused = honest.ctx.responses.put, []

    async def put(*args: Any, **kwargs: Any) -> bool:
        if len(refused) < away:
            refused.append(args[1])
            raise StoreUnavailable("redis responses: ConnectionError")
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(honest.ctx.responses, "put", put)
    client = openai_client(honest)
    plain = await client.responses.create(model="default", input="Hi")
    refused.clear()
    async with client.responses.stream(model="default", input="Hi") as s:
        streamed = await s.get_final_response()
    stored = away < 3
    for made in (plain, streamed):
        assert made.status == "completed" and made.to_dict()["store"] is stored, made.to_dict()["store"]
        if stored:
            assert (await client.responses.retrieve(made.id)).id == made.id
        else:
            with pytest.raises(openai.NotFoundError):
                await client.responses.retrieve(made.id)


async def test_deleting_a_key_deletes_its_stored_responses(honest: ApiUnderTest) -> None:
    """No key could read them again, yet they stayed until they expired: an operator deleting a customer's
    key expects its conversations gone."""
    doomed_key, record = await honest.ctx.store.create_key(1000)
    doomed, kept = openai_client(honest, key=doomed_key), openai_client(honest)
    made = [await doomed.responses.create(model="default", input=f"Hi {i}") for i in range(3)]
    mine = await kept.responses.create(model="default", input="Hi")
    async with aiohttp.ClientSession() as s, s.delete(f"{honest.url}/api_management/delete-api-key/{doomed_key}",
                                                      headers={"admin-key": "admin-secret-for-tests"}) as r:
        assert r.status == 200, await r.text()
    assert [await honest.ctx.responses.get(record.id, m.id) for m in made] == [None] * 3
    assert (await kept.responses.retrieve(mine.id)).id == mine.id


@pytest.mark.parametrize(("deleted_on", "mode"), [("this host", "object"), ("another host", "streamed"),
                                                  ("another host", "background")])
@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_an_answer_made_as_its_key_is_deleted_is_not_stored(tmp_path: Path, store: str, deleted_on: str,
                                                                  mode: str) -> None:
    """The key is deleted (by an admin, on this host or another sharing the store: two API processes on one SQLite
    file, or two hosts on one Redis) while its response is being answered: the answer was stored when it came,
    for the usual day, though reads are scoped to the key and no key could ever read it. Nothing of it is stored;
    the request in flight still gets its answer, saying ``store: false``."""
    miner = Script([(0.3, d) for d in sse(chunk("Late."), chunk(finish="stop"))])
    async with fresh_namespace(store, "deleted") as namespace, \
            api_with_miners(tmp_path, {1: miner}, redis_namespace=namespace) as here, \
            api_with_miners(tmp_path, {1: answering("Other.")}, redis_namespace=namespace) as other:
        key_id = (await here.ctx.store.get_key(hash_key(here.key))).id
        client = openai_client(here)
        asked = asyncio.ensure_future(client.responses.create(
            model="default", input="Hi", stream=mode == "streamed", background=mode == "background"))
        await wait_until(lambda: miner.active > 0, 5)
        admin = (here if deleted_on == "this host" else other).url
        async with aiohttp.ClientSession() as s, s.delete(f"{admin}/api_management/delete-api-key/{here.key}",
                                                          headers={"admin-key": "admin-secret-for-tests"}) as r:
            assert r.status == 200, await r.text()
        made = await asked
        if mode == "streamed":
            events = [e async for e in made]
            assert events[-1].type == "response.completed"
            made = events[-1].response
        if mode == "background":
            await wait_until(lambda: not here.ctx.running_responses, 5)
        else:
            assert made.output_text == "Late." and made.to_dict()["store"] is False, made
        assert miner.calls == 1 and not here.ctx.running_responses
        for host in (here, other):
            assert await host.ctx.responses.get(key_id, made.id) is None
        assert await stored_by(here, key_id) == 0


async def stored_by(api: ApiUnderTest, key_id: str) -> int:
    """How many responses the store holds for ``key_id``, whatever their ids: its SQLite rows, or its Redis names."""
    responses = api.ctx.responses
    if isinstance(responses, SQLiteResponseStore):
        return responses._query("SELECT COUNT(*) FROM stored_responses WHERE key_id = ?", (key_id,))[0][0]
    return len([name async for name in responses.r.scan_iter(match=f"{responses.ns}:response:{key_id}:*")])


async def test_a_failing_response_store_is_a_503_to_read_and_a_warning_to_write(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a conversation the store cannot give is the store's 503 (retry), never a 500 or a "not
    found"; failing to keep one costs no answer: it is sent, and the loss is a WARNING."""
    from loguru import logger

    from shared.store.base import StoreUnavailable

    client = openai_client(honest)
    made = await client.responses.create(model="default", input="Hi")

    async def down(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("redis responses: ConnectionError: gone")

    for name in ("get", "put"):
        monkeypatch.setattr(honest.ctx.responses, name, down)
    for attempt in (client.responses.create(model="default", input="Again", previous_response_id=made.id),
                    client.responses.retrieve(made.id)):
        with pytest.raises(openai.InternalServerError) as e:
            await attempt
        assert e.value.status_code == 503 and e.value.code == "store_unavailable"
        assert "The response store is unavailable" in e.value.message, "it named the key store, which answered"
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        answered = await client.responses.create(model="default", input="Hi again")
    finally:
        logger.remove(sink)
    assert answered.status == "completed" and answered.output_text
    assert any(answered.id in w and "not stored" in w for w in warnings), warnings


async def test_a_response_is_stored_once(honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp prepares a response a second time on its way out: each wrote the record again."""
    real_put, puts = honest.ctx.responses.put, []

    async def counted(*args: Any, **kwargs: Any) -> bool:
        puts.append(args[1])
        return await real_put(*args, **kwargs)

    monkeypatch.setattr(honest.ctx.responses, "put", counted)
    made = await openai_client(honest).responses.create(model="default", input="Hi")
    async with openai_client(honest).responses.stream(model="default", input="Hi") as s:
        streamed = await s.get_final_response()
    assert puts == [made.id, streamed.id]
