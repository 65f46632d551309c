"""A chat conversation whose tool turns do not fit together is OpenAI's 400, in OpenAI's words, through the real API
and the OpenAI SDK (``BadRequestError``), before any miner is asked: an assistant message's call that no ``tool``
message answers (the miners' models were asked to go on without its result, and answered as if it had not been
made), and a ``tool`` message answering no call. The routes that build chat messages themselves (``/v1/completions``,
the Responses API) still answer, and a Responses request meets its own API's words, never chat's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import Script, api_with_miners, call, chunk, openai_client, sse

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
UNANSWERED = ("An assistant message with 'tool_calls' must be followed by tool messages responding to each "
              "'tool_call_id'. The following tool_call_ids did not have response messages: ")
ORPHAN = ("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
          "'tool_calls'.")


def answering() -> Script:
    return Script([(0, d) for d in sse(chunk("Sunny in both."), chunk(finish="stop"))])


def calls(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": i[5:]})}}
        for i in ids]}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "sunny"}


ASKED = {"role": "user", "content": "Weather in Paris and Rome?"}
THANKS = {"role": "user", "content": "Thanks. And tomorrow?"}
SAID = {"role": "assistant", "content": "Paris is sunny; Rome next."}


@pytest.mark.parametrize(("messages", "message", "param"), [
    ([ASKED, calls("call_paris", "call_rome"), result("call_paris"), THANKS], UNANSWERED + "call_rome",
     "messages.[1].role"),
    ([ASKED, calls("call_paris", "call_rome"), THANKS], UNANSWERED + "call_paris, call_rome", "messages.[1].role"),
    ([ASKED, calls("call_paris"), result("call_paris"), THANKS, calls("call_rome")], UNANSWERED + "call_rome",
     "messages.[4].role"),
    ([ASKED, result("call_paris")], ORPHAN, "messages.[1].role"),
    ([ASKED, calls("call_paris"), result("call_paris"), result("call_rome")], ORPHAN, "messages.[3].role"),
    # the first in the conversation: here the call left unanswered, before the result that answers no call
    ([ASKED, calls("call_paris"), result("call_rome")], UNANSWERED + "call_paris", "messages.[1].role"),
    # a call's results come right after it: another message first leaves it unanswered, whatever follows
    ([ASKED, calls("call_paris"), THANKS, result("call_paris")], UNANSWERED + "call_paris", "messages.[1].role"),
    ([ASKED, calls("call_paris", "call_rome"), result("call_paris"), SAID, result("call_rome")],
     UNANSWERED + "call_rome", "messages.[1].role"),
    ([ASKED, calls("call_paris"), result("call_paris"), THANKS, result("call_paris")], ORPHAN, "messages.[4].role"),
], ids=["one of two calls unanswered", "both unanswered", "the last turn's call unanswered", "result for no call",
        "result for a call never made", "a mistyped call id", "a user message before the result",
        "an assistant message between the results", "a result repeated in a later turn"])
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_turns_that_do_not_fit_are_openais_400(tmp_path: Path, messages: list[dict[str, Any]],
                                                          message: str, param: str, stream: bool) -> None:
    miner = answering()
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="default", messages=messages, tools=[WEATHER],  # type: ignore[arg-type]
                                                 stream=stream)
        await client.close()
    assert raised.value.status_code == 400
    assert raised.value.body == {"message": message, "type": "invalid_request_error", "code": None, "param": param}
    assert miner.calls == 0, "a miner was asked"


def without(key: str, message: dict[str, Any], call: int | None = None) -> dict[str, Any]:
    """``message`` without ``key`` (of its call number ``call``, when given)."""
    if call is None:
        return {k: v for k, v in message.items() if k != key}
    calls = [dict(c) for c in message["tool_calls"]]
    del calls[call][key]
    return message | {"tool_calls": calls}


@pytest.mark.parametrize(("messages", "message", "param", "code"), [
    ([ASKED, without("id", calls("call_paris"), 0), result("call_paris")],
     "Missing required parameter: 'messages[1].tool_calls[0].id'.", "messages[1].tool_calls[0].id",
     "missing_required_parameter"),
    ([ASKED, calls("call_paris"), result("call_paris"), THANKS, without("id", calls("call_x", "call_y"), 1)],
     "Missing required parameter: 'messages[4].tool_calls[1].id'.", "messages[4].tool_calls[1].id",
     "missing_required_parameter"),
    ([ASKED, calls("call_paris"), without("tool_call_id", result("call_paris"))],
     "Missing parameter 'tool_call_id': messages with role 'tool' must have a 'tool_call_id'.",
     "messages.[2].tool_call_id", None),
], ids=["a call without its id", "a later turn's second call without its id", "a tool message without tool_call_id"])
async def test_a_missing_call_id_is_openais_400(tmp_path: Path, messages: list[dict[str, Any]], message: str,
                                               param: str, code: str | None) -> None:
    """A call sent back without its ``id``, or a result without the ``tool_call_id`` it answers, is OpenAI's 400 for
    the missing field, its ``code`` too (the SDK's ``BadRequestError.code``): a call's missing id read "... did not
    have response messages: None", a result's "Invalid value for 'messages.2.tool_call_id'" (code invalid_value)."""
    miner = answering()
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model="default", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
        await client.close()
    assert raised.value.code == code
    assert raised.value.body == {"message": message, "type": "invalid_request_error", "code": code, "param": param}
    assert miner.calls == 0, "a miner was asked"


async def test_a_responses_output_after_another_message_is_answered_in_chats_order(tmp_path: Path) -> None:
    """The Responses API pairs a ``function_call_output`` with its call by id wherever it sits (OpenAI's does; Codex
    sends a message between them): it still answers, and the miner gets each call's result right after the call,
    as chat wants. It was given the user's message between them, which chat servers refuse."""
    miner = answering()
    output = {"type": "function_call_output", "output": "sunny"}
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        response = await client.responses.create(model="default", tools=[WEATHER["function"] | {"type": "function"}],  # type: ignore[list-item]
                                                 input=[ASKED,  # type: ignore[list-item]
                                                        {"type": "function_call", "call_id": "call_paris",
                                                         "name": "get_weather", "arguments": "{}"},
                                                        {"type": "function_call", "call_id": "call_rome",
                                                         "name": "get_weather", "arguments": "{}"},
                                                        output | {"call_id": "call_paris"},
                                                        {"role": "user", "content": "Be brief."},
                                                        output | {"call_id": "call_rome"}])
        await client.close()
    assert response.status == "completed" and response.output_text == "Sunny in both."
    sent = miner.bodies[-1]["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent] == [
        ("user", None), ("assistant", None), ("tool", "call_paris"), ("tool", "call_rome"), ("user", None)]


async def test_whole_tool_turns_are_answered_and_the_routes_that_build_messages_still_answer(tmp_path: Path) -> None:
    """Each call answered (parallel results in any order) goes to the miners; a text completion's prompt and a
    Responses turn with its call and output still answer."""
    miner = answering()
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        done = await client.chat.completions.create(
            model="default", tools=[WEATHER],  # type: ignore[list-item]
            messages=[ASKED, calls("call_paris", "call_rome"), result("call_rome"), result("call_paris"), THANKS])
        text = await client.completions.create(model="default", prompt="Weather?")
        response = await client.responses.create(model="default", tools=[WEATHER["function"] | {"type": "function"}],  # type: ignore[list-item]
                                                 input=[{"role": "user", "content": "Weather?"},
                                                        {"type": "function_call", "call_id": "call_x",
                                                         "name": "get_weather", "arguments": "{}"},
                                                        {"type": "function_call_output", "call_id": "call_x",
                                                         "output": "sunny"}])
        await client.close()
    assert done.choices[0].message.content == "Sunny in both." and text.choices[0].text == "Sunny in both."
    assert response.status == "completed" and response.output_text == "Sunny in both."
    assert miner.calls == 3


async def test_a_conversation_whose_call_item_was_deleted_meets_the_responses_apis_words(tmp_path: Path) -> None:
    """A ``conversation`` keeps a function call and its output; the call item deleted, the output answers nothing.
    The next turn was chat's 400 (``messages.[2].role``, a place no Responses caller sent): now it is the Responses
    API's own, naming ``conversation``, and no miner is asked."""
    miner = answering()
    async with api_with_miners(tmp_path, {1: miner}) as api:
        status, made = await call(api, "POST", "/v1/conversations", {"items": [
            {"type": "message", "role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "call_x", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_x", "output": "sunny"}]})
        assert status == 200, made
        status, items = await call(api, "GET", f"/v1/conversations/{made['id']}/items?order=asc")
        called = next(item["id"] for item in items["data"] if item["type"] == "function_call")
        status, _ = await call(api, "DELETE", f"/v1/conversations/{made['id']}/items/{called}")
        assert status == 200
        client = openai_client(api)
        with pytest.raises(openai.BadRequestError) as raised:
            await client.responses.create(model="default", input="And tomorrow?", conversation=made["id"])
        await client.close()
    body = raised.value.body
    assert body["message"].startswith("No tool call found for function call output with call_id call_x. It is the "
                                      "conversation's item "), body  # and the DELETE that repairs it
    assert {k: body[k] for k in ("type", "code", "param")} == {"type": "invalid_request_error", "code": None,
                                                               "param": "conversation"}, body
    assert miner.calls == 0
