"""A turn after a response that ended in function calls must carry each call's ``function_call_output`` (the Agents
SDK's flow): through the real API and a miner, on SQLite and on Redis, a turn that leaves one out is OpenAI's 400
naming the call, and no miner is asked to go on without the call's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ApiUnderTest, Script, call, chunk, sse
from tests.integration.test_responses_chain import STORES, api_on
from tests.integration.test_responses_conversation import new_conversation

TOOLS = [{"type": "function", "name": "get_weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALLS = ("call_paris", "call_rome")


def calling_twice() -> Script:
    """A miner whose every answer calls get_weather twice (``CALLS``)."""
    calls = [{"index": i, "id": call_id, "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": call_id[5:]})}}
             for i, call_id in enumerate(CALLS)]
    first = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": calls},
                                     "finish_reason": None}]})
    return Script([(0, d) for d in sse(first, chunk(finish="tool_calls"))])


def output(call_id: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": "sunny"}


def unanswered(call_id: str) -> dict[str, Any]:
    return {"error": {"message": f"No tool output found for function call {call_id}.",
                      "type": "invalid_request_error", "param": "input", "code": None}}


async def respond(api: ApiUnderTest, **fields: Any) -> tuple[int, dict[str, Any]]:
    return await call(api, "POST", "/v1/responses", {"model": "default", "tools": TOOLS} | fields)


@pytest.mark.parametrize("store", STORES)
async def test_a_turn_after_function_calls_needs_an_output_for_each(tmp_path: Path, store: str) -> None:
    """The previous response called get_weather twice: a next turn with a user message instead, or with one output
    of the two, is the 400 naming the call left unanswered, before any miner; with both it is answered."""
    miner = calling_twice()
    async with api_on(store, tmp_path, miner) as api:
        status, first = await respond(api, input="Weather in Paris and Rome?")
        assert status == 200 and [item["call_id"] for item in first["output"]] == list(CALLS), first
        asked = miner.calls
        for sent, left in (("And tomorrow?", "call_paris"), ([output("call_paris")], "call_rome"),
                           ([output("call_rome"), {"role": "user", "content": "Thanks"}], "call_paris")):
            assert await respond(api, input=sent, previous_response_id=first["id"]) == (400, unanswered(left))
        assert miner.calls == asked
        status, went_on = await respond(api, input=[output(c) for c in CALLS], previous_response_id=first["id"])
        assert status == 200 and went_on["status"] == "completed", went_on
        assert [m["role"] for m in miner.bodies[-1]["messages"]] == ["user", "assistant", "tool", "tool"]


@pytest.mark.parametrize("store", STORES)
async def test_a_conversation_that_ended_in_function_calls_needs_their_outputs(tmp_path: Path, store: str) -> None:
    """A ``conversation`` whose last turn called functions: its items come before the input (as at OpenAI), so the
    next turn without their outputs is the same 400, and is not added to the conversation."""
    miner = calling_twice()
    async with api_on(store, tmp_path, miner) as api:
        conversation = await new_conversation(api)
        status, first = await respond(api, input="Weather in Paris and Rome?", conversation=conversation)
        assert status == 200, first
        assert await respond(api, input="And tomorrow?", conversation=conversation) == (400, unanswered("call_paris"))
        status, went_on = await respond(api, input=[output(c) for c in CALLS], conversation=conversation)
        assert status == 200 and went_on["status"] == "completed", went_on
        status, items = await call(api, "GET", f"/v1/conversations/{conversation}/items?order=asc")
        assert [item["type"] for item in items["data"]] == ["message", "function_call", "function_call",
                                                            "function_call_output", "function_call_output",
                                                            "function_call", "function_call"]


async def test_a_function_call_in_input_needs_its_output_too(tmp_path: Path) -> None:
    """A conversation sent whole in ``input`` (no stored response) with a call and no output: the same 400."""
    miner = calling_twice()
    async with api_on("sqlite", tmp_path, miner) as api:
        sent = [{"role": "user", "content": "Weather?"},
                {"type": "function_call", "call_id": "call_x", "name": "get_weather", "arguments": "{}"},
                {"role": "user", "content": "Well?"}]
        assert await respond(api, input=sent) == (400, unanswered("call_x"))
        assert miner.calls == 0
