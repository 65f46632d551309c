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
], ids=["one of two calls unanswered", "both unanswered", "the last turn's call unanswered", "result for no call",
        "result for a call never made", "a mistyped call id"])
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
    assert raised.value.body == {"message": "No tool call found for function call output with call_id call_x.",
                                 "type": "invalid_request_error", "code": None, "param": "conversation"}
    assert miner.calls == 0
