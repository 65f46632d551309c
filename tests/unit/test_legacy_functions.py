"""The legacy function calling shape (``api/legacy_functions.py``), chunk by chunk: what a miner's stream of
tool calls becomes for a caller that sent ``functions``."""

from __future__ import annotations

import json

import pytest

from api.legacy_functions import LegacyStream, as_function_call, messages_as_tools


def chunk(delta: dict, finish: str | None = None) -> str:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_a_stream_of_two_calls_shows_the_first_alone_as_function_call_pieces() -> None:
    """Should a miner's stream of several calls get through, the caller sees the first call's pieces only (the
    legacy shape holds one), and ``finish_reason`` ``function_call``; the miner's chunk is left as it came."""
    first = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    second = {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    stream = LegacyStream()
    text = chunk({"content": "Hi"})
    assert stream.chunk(text) is text
    sent = chunk({"role": "assistant", "content": None, "tool_calls": [first, second]})
    out = json.loads(stream.chunk(sent))["choices"][0]
    assert out["delta"] == {"role": "assistant", "content": None,
                            "function_call": {"name": "get_weather", "arguments": ""}}
    assert json.loads(stream.chunk(chunk({"tool_calls": [second]})))["choices"][0]["delta"] == {}
    piece = chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]})
    assert json.loads(stream.chunk(piece))["choices"][0]["delta"] == {"function_call": {"arguments": '{"city"'}}
    end = json.loads(stream.chunk(chunk({}, "tool_calls")))["choices"][0]
    assert end["finish_reason"] == "function_call"
    assert "tool_calls" in json.loads(sent)["choices"][0]["delta"]


def test_a_completion_keeps_its_first_call_as_function_call() -> None:
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
             for i, n in enumerate(("a", "b"))]
    obj = {"choices": [{"index": 0, "finish_reason": "tool_calls",
                        "message": {"role": "assistant", "content": None, "tool_calls": calls}}]}
    choice = as_function_call(obj)["choices"][0]
    assert choice == {"index": 0, "finish_reason": "function_call",
                      "message": {"role": "assistant", "content": None, "function_call": {"name": "a", "arguments": "{}"}}}


CALL = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(("forced", "miners", "openais"), [
    (False, "tool_calls", "function_call"),
    (False, "stop", "function_call"),  # vLLM and others end calls "stop": a chosen call is still "function_call"
    (True, "tool_calls", "stop"),  # a forced call ends "stop" at OpenAI (openai-node#305), as a named tool_choice does
    (True, "stop", "stop"),
    (True, "length", "length"),  # the caller's limit cut the call: said so, whatever was asked
    (False, "length", "length"),
])
def test_a_legacy_answers_finish_reason_is_openais(forced: bool, miners: str, openais: str) -> None:
    """OpenAI ends a call the model chose ``function_call``, and one the caller forced (``function_call: {"name":
    ...}``) ``stop``: the miner's own was kept, so a forced call read ``function_call`` (its ``tool_calls``) and a
    chosen call from a model server that ends calls ``stop`` read ``stop``, and code that checks
    ``finish_reason == "function_call"`` (OpenAI's cookbook) found no call. Streamed and not alike."""
    obj = {"choices": [{"index": 0, "finish_reason": miners,
                        "message": {"role": "assistant", "content": None, "tool_calls": [CALL]}}]}
    assert as_function_call(obj, forced=forced)["choices"][0]["finish_reason"] == openais
    stream = LegacyStream(forced=forced)
    stream.chunk(chunk({"role": "assistant", "tool_calls": [CALL]}))
    assert json.loads(stream.chunk(chunk({}, miners)))["choices"][0]["finish_reason"] == openais


def test_a_legacy_answer_without_a_call_ends_stop() -> None:
    """Text (``function_call: "none"``, or a model that chose to answer) ends ``stop``, whatever a miner said."""
    for reason in ("stop", "tool_calls"):
        obj = {"choices": [{"index": 0, "finish_reason": reason, "message": {"role": "assistant", "content": "Hi"}}]}
        assert as_function_call(obj)["choices"][0]["finish_reason"] == "stop"
        stream = LegacyStream()
        stream.chunk(chunk({"content": "Hi"}))
        assert json.loads(stream.chunk(chunk({}, reason)))["choices"][0]["finish_reason"] == "stop"


def test_a_legacy_turn_missing_its_other_half_is_left_as_it_came() -> None:
    """Only an assistant ``function_call`` followed by its ``function`` result becomes a tool turn."""
    lone_call = [{"role": "user", "content": "x"}, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                 {"role": "user", "content": "y"}]
    assert messages_as_tools(lone_call) == lone_call
    lone_result = [{"role": "user", "content": "x"}, {"role": "function", "name": "f", "content": "1"}]
    assert messages_as_tools(lone_result) == lone_result
