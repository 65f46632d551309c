"""A Responses API request becomes the chat completion its caller means; what cannot is a 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.responses_translate import chat_body, kept_share, search_tool, truncated
from api.responses_wire import ResponsesRequest
from shared.errors import ApiError
from shared.http import parse_model
from shared.protocol import ChatCompletionRequest

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True}


def translate(**fields: Any) -> dict[str, Any]:
    body = chat_body(parse_model(ResponsesRequest, fields))
    parse_model(ChatCompletionRequest, body)  # what the chat pipeline then accepts
    return body


def refused(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        translate(**fields)
    assert e.value.status == 400
    return e.value


def test_a_string_input_with_instructions_is_a_system_and_a_user_message() -> None:
    body = translate(model="m", input="Hello", instructions="Be brief", max_output_tokens=20, temperature=0.5)
    assert body["messages"] == [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]
    assert body["max_tokens"] == 20 and body["temperature"] == 0.5 and body["model"] == "m"
    assert body["stream"] is False and "stream_options" not in body


def test_streaming_asks_the_miners_for_usage() -> None:
    assert translate(input="Hi", stream=True)["stream_options"] == {"include_usage": True}


def test_a_tool_round_trip_is_one_assistant_turn_then_the_tool_results() -> None:
    body = translate(input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris and Rome?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.",
                                                             "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
    ], tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"})
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER["parameters"],
        "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_text_after_a_call_joins_the_calls_turn_so_the_tool_result_follows_it() -> None:
    """This API streams text that comes after a call as its own message item: replayed as the next
    request's input, it must not come between the call and its result (chat servers answer 400)."""
    body = translate(input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "One moment.",
                                                             "annotations": []}]},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ], tools=[WEATHER])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool"]
    assert body["messages"][1]["content"] == "One moment."
    assert body["messages"][1]["tool_calls"][0]["id"] == "c1"


def test_structured_output_and_images_translate() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    body = translate(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}],
        text={"format": {"type": "json_schema", "name": "City", "schema": schema, "strict": True}})
    assert body["messages"][0]["content"][1] == {"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "City", "schema": schema, "strict": True}}
    assert translate(input="x", text={"format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in translate(input="x", text={"format": {"type": "text"}})


def test_a_file_with_its_bytes_is_chats_file_part() -> None:
    """The Vercel AI SDK's Responses model sends a PDF as an input_file with file_data: chat takes it as a file
    part, so it reaches the miners as it would through chat completions (it was a 400 here)."""
    pdf = "data:application/pdf;base64,JVBERi0xLjQ="
    body = translate(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Summarise"},
        {"type": "input_file", "filename": "a.pdf", "file_data": pdf}, {"type": "input_file", "file_data": pdf}]}])
    assert body["messages"][0]["content"][1:] == [{"type": "file", "file": {"file_data": pdf, "filename": "a.pdf"}},
                                                  {"type": "file", "file": {"file_data": pdf}}]


def test_log_probabilities_are_asked_for_with_include_as_at_openai() -> None:
    body = translate(input="x", include=["message.output_text.logprobs"], top_logprobs=2)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    alone = translate(input="x", top_logprobs=2, include=["reasoning.encrypted_content"])
    assert "logprobs" not in alone and "top_logprobs" not in alone


def test_the_subnets_extras_reach_the_chat_request() -> None:
    body = translate(input="x", uids=[1, 2], timeout=5, task="InferenceTask", seed=7)
    assert (body["uids"], body["timeout"], body["task"], body["seed"]) == ([1, 2], 5, "InferenceTask", 7)


def test_fields_chat_completions_share_reach_the_miners_as_they_would_from_chat() -> None:
    """A chat completion's caller's ``prompt_cache_key``, ``safety_identifier`` and ``user`` reach the miners
    (each an OpenAI chat field too, for a model server that routes or caches by it): a response's do too."""
    body = translate(input="x", prompt_cache_key="thread-7", safety_identifier="u-1", user="me")
    assert (body["prompt_cache_key"], body["safety_identifier"], body["user"]) == ("thread-7", "u-1", "me")
    assert "prompt_cache_key" not in translate(input="x")


TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
SEARCH = {"type": "web_search", "search_context_size": "low", "user_location": {"type": "approximate", "country": "GB"}}


@pytest.mark.parametrize(("tools", "choice", "search", "chat_tools", "chat_choice"), [
    ([SEARCH], None, True, None, None),
    ([SEARCH, WEATHER], "auto", True, ["get_weather"], "auto"),
    ([SEARCH, WEATHER], "required", True, ["get_weather"], "required"),  # a function call is still required
    ([SEARCH], "required", True, None, None),  # met by the search: the miners answer freely
    ([SEARCH, WEATHER], {"type": "web_search"}, True, ["get_weather"], None),
    ([{"type": "web_search_preview"}], {"type": "web_search_preview"}, True, None, None),
    ([SEARCH, WEATHER], "none", False, ["get_weather"], "none"),
    ([SEARCH, WEATHER], {"type": "function", "name": "get_weather"}, False, ["get_weather"],
     {"type": "function", "function": {"name": "get_weather"}}),
    ([WEATHER], None, False, ["get_weather"], None),
    # allowed_tools: the miners are offered only the tools it lists; web search runs only if it is listed
    ([SEARCH, WEATHER, TIME], {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function",
                                                                                  "name": "get_time"}]},
     False, ["get_time"], "auto"),
    ([SEARCH, WEATHER], {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]},
     True, None, None),  # met by the search
    ([SEARCH, WEATHER], {"type": "allowed_tools", "mode": "required",
                         "tools": [{"type": "web_search"}, {"type": "function", "name": "get_weather"}]},
     True, ["get_weather"], "required"),
])
def test_web_search_is_done_here_and_the_miners_get_the_function_tools(
        tools: list[dict], choice: Any, search: bool, chat_tools: list[str] | None, chat_choice: Any) -> None:
    fields = {"input": "Weather in Paris?", "tools": tools} | ({"tool_choice": choice} if choice is not None else {})
    body = translate(**fields)
    assert (search_tool(parse_model(ResponsesRequest, fields)) is not None) is search
    assert ([t["function"]["name"] for t in body["tools"]] if "tools" in body else None) == chat_tools
    assert body.get("tool_choice") == chat_choice


@pytest.mark.parametrize("choice", [None, "auto", "required", {"type": "allowed_tools", "mode": "required", "tools": [
    {"type": "web_search"}, {"type": "function", "name": "get_weather"}]}])
def test_max_tool_calls_0_makes_no_search_and_leaves_the_functions(choice: Any) -> None:
    """Web search is the one built-in tool served: no call to one allowed is no search. Function calls are
    the caller's own tools, not built-in: the miners still get them (and a required call)."""
    fields = {"input": "Weather in Paris?", "tools": [SEARCH, WEATHER], "max_tool_calls": 0}
    fields |= {"tool_choice": choice} if choice is not None else {}
    assert search_tool(parse_model(ResponsesRequest, fields)) is None
    body = translate(**fields)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert body.get("tool_choice") == (choice if isinstance(choice, str) else "required" if choice else None)
    assert search_tool(parse_model(ResponsesRequest, fields | {"max_tool_calls": 1})) is not None, "one is a search"


@pytest.mark.parametrize("fields", [
    {"parallel_tool_calls": False},  # Codex sends it with every request
    {"tool_choice": "auto", "parallel_tool_calls": True},
    {"tools": [SEARCH], "tool_choice": "auto", "parallel_tool_calls": True},  # web search only: no miner tool
    {"tool_choice": "none"},
])
def test_tool_settings_without_a_tool_for_the_miners_are_not_sent(fields: dict) -> None:
    """OpenAI's and vLLM's chat servers refuse tool_choice and parallel_tool_calls without tools: every such
    request came back as the caller's 400 "model servers refused"."""
    body = translate(input="hi", **fields)
    assert "tools" not in body and "tool_choice" not in body and "parallel_tool_calls" not in body


def test_an_earlier_turns_web_search_item_is_skipped() -> None:
    """The Agents SDK sends a turn's output back as input: its web_search_call holds no text for chat."""
    body = translate(input=[
        {"role": "user", "content": "Tell me about Pelseldan"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A city.",
                                                             "annotations": [{"type": "url_citation"}]}]},
        {"role": "user", "content": "And its river?"},
    ], tools=[SEARCH])
    assert body["messages"] == [{"role": "user", "content": "Tell me about Pelseldan"},
                                {"role": "assistant", "content": "A city."},
                                {"role": "user", "content": "And its river?"}]


@pytest.mark.parametrize(("fields", "param", "says"), [
    ({"input": "x", "previous_response_id": ""}, "previous_response_id", "empty string. Expected a string with minimum length 1"),
    ({"input": "x", "conversation": {"name": "c"}}, "conversation", "a conversation id, or an object"),
    ({"input": []}, "input", "at least one item"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input", "no message to answer"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, "tools.0.type", "only function and web_search tools"),
    ({"input": "x", "tools": [{"type": "web_search", "search_context_size": "huge"}]},
     "tools.0.search_context_size", "Input should be"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools.0.name", "needs a name"),
    # an item reference (its type is optional in the SDK) is resolved before (responses_state.resolved): one
    # that was not is a 400, never sent on as a message
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0", "was not resolved"),
    ({"input": [{"role": "user", "content": "a"}, {"id": "msg_1"}]}, "input.1", "an item_reference names"),
    ({"input": [{"role": "user", "content": "a"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input.1.call_id", "Missing required parameter: 'input.1.call_id'."),
    ({"input": [{"role": "robot", "content": "a"}]}, "input.0.role", "Input should be"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input.0.content.0.file_data", "file ids need OpenAI's file store"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]},
     "input.0.content.0.file_data", "file URLs are not fetched"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "input.0.content.0.type", "not 'input_audio'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input.0.content.0.image_url", "needs an image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]}, "input.0.content.0.text",
     "must be a string"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice", "not among the tools"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice", "tool_choice must be"),
    ({"input": "x", "tool_choice": {"type": ["web_search"]}}, "tool_choice.type", "must be a string"),
    # a function's bare name (or any other string): the 400 names this API's forms, not chat's
    ({"input": "x", "tools": [WEATHER], "tool_choice": "get_weather"}, "tool_choice",
     '{"type": "function", "name": ...}'),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                        "tools": [{"type": "function", "name": "get_time"}]}},
     "tool_choice.tools.0", "only the request's own tools"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                        "tools": [{"type": "web_search"}]}},
     "tool_choice.tools.0", "only the request's own tools"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                        "tools": [{"type": "function", "name": ["get_weather"]}]}},
     "tool_choice.tools.0", "only the request's own tools"),  # not a crash on a name that is not a string
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "tools": [WEATHER]}},
     "tool_choice.mode", "Missing required parameter"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
     "tool_choice.tools", "empty array"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
     "Missing required parameter"),
    ({"input": "x", "max_output_tokens": "5"}, "max_output_tokens", "valid integer"),
    # echoed on the response as the SDK types them: a value OpenAI refuses is a 400, not an echo the SDK refuses
    ({"input": "x", "truncation": "sometimes"}, "truncation", "'auto' or 'disabled'"),
    ({"input": "x", "service_tier": "turbo"}, "service_tier", "Input should be"),
    ({"input": "x", "reasoning": {"summary": "verbose"}}, "reasoning.summary", "'concise'"),
    ({"input": "x", "prompt_cache_retention": "1h"}, "prompt_cache_retention", "'24h'"),
    ({"input": "x", "safety_identifier": 7}, "safety_identifier", "valid string"),
    ({"input": "x", "max_tool_calls": -1}, "max_tool_calls", "Expected a value >= 0"),
    ({"input": "x", "max_tool_calls": 1.0}, "max_tool_calls", "valid integer"),
    ({"input": "x", "max_tool_calls": True}, "max_tool_calls", "valid integer"),
    ({"input": "x", "max_tool_calls": "2"}, "max_tool_calls", "valid integer"),
    ({"input": "x", "max_tool_calls": 2**70}, "max_tool_calls", "above maximum value"),  # echoed: no client reads it
    ({"input": "x", "stream_options": 5}, "stream_options", "valid dictionary"),
    ({"input": "x", "stream_options": {"include_obfuscation": "no"}}, "stream_options.include_obfuscation",
     "valid boolean"),
    # a tool result for no call: OpenAI's 400, in its words (a mistyped id, or the call left out of the input)
    ({"input": [{"type": "function_call_output", "call_id": "call_nope", "output": "sunny"}], "tools": [WEATHER]},
     "input", "No tool call found for function call output with call_id call_nope."),
    ({"input": [{"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_2", "output": "sunny"}], "tools": [WEATHER]},
     "input", "with call_id call_2."),
    # a choice that demands the search, with no built-in call allowed: it cannot be met
    ({"input": "x", "tools": [SEARCH], "tool_choice": {"type": "web_search"}, "max_tool_calls": 0},
     "max_tool_calls", "allows no call to a built-in tool"),
    ({"input": "x", "tools": [SEARCH], "tool_choice": "required", "max_tool_calls": 0},
     "max_tool_calls", "requires a web search call"),
    ({"input": "x", "tools": [SEARCH, WEATHER], "max_tool_calls": 0,
      "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "web_search"}]}},
     "max_tool_calls", "requires a web search call"),
])
def test_what_cannot_be_served_is_a_400_naming_its_place(fields: dict[str, Any], param: str, says: str) -> None:
    e = refused(**fields)
    assert e.param == param and says in e.message, (e.param, e.message)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=12)
ITEM_KEYS = st.sampled_from(["type", "role", "content", "call_id", "name", "arguments", "output", "text",
                             "image_url", "id"])
ITEM_VALUES = st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "input_text",
                               "input_image", "output_text", "refusal", "user", "assistant", "system"]) | JSON
PARTS = st.lists(st.dictionaries(ITEM_KEYS, ITEM_VALUES, max_size=4), max_size=3)
ITEM = st.dictionaries(ITEM_KEYS, ITEM_VALUES | PARTS, max_size=6)


@settings(max_examples=400, deadline=None, database=None)
@given(items=st.lists(ITEM, min_size=1, max_size=4),
       extra=st.dictionaries(st.sampled_from(["tools", "tool_choice", "text", "instructions", "stream",
                                                      "max_tool_calls"]), JSON,
                             max_size=2))
def test_any_body_is_translated_or_a_400_never_a_crash(items: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    try:
        translate(input=items, **extra)
    except ApiError as e:
        assert e.status == 400 and e.param


@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high", "xhigh", "max"])
def test_reasoning_effort_and_verbosity_reach_the_miners_as_chat_fields(effort: str) -> None:
    """Codex and the Agents SDK send them for reasoning models: dropped, the model thinks at its default.
    Every effort the SDK's ``ReasoningEffort`` names goes on (xhigh and max were a 400)."""
    body = translate(input="Hi", reasoning={"effort": effort, "summary": "auto"}, text={"verbosity": "high"})
    assert body["reasoning_effort"] == effort and body["verbosity"] == "high"
    assert "reasoning" not in body and "text" not in body
    plain = translate(input="Hi")
    assert "reasoning_effort" not in plain and "verbosity" not in plain


def test_an_unknown_reasoning_effort_is_a_400() -> None:
    with pytest.raises(ApiError) as e:
        translate(input="Hi", reasoning={"effort": "extreme"})
    assert e.value.status == 400 and "reasoning" in str(e.value.param or e.value)


CHOICE_TYPES = st.sampled_from(["allowed_tools", "function", "web_search", "auto"]) | JSON
ALLOWED = st.fixed_dictionaries({"type": CHOICE_TYPES}, optional={
    "name": st.sampled_from(["get_weather", "get_time"]) | JSON,
    "mode": st.sampled_from(["auto", "required"]) | JSON,
    "tools": st.lists(st.dictionaries(st.sampled_from(["type", "name"]),
                                      st.sampled_from(["function", "web_search", "get_weather", "get_time"]) | JSON,
                                      max_size=2), max_size=3) | JSON})


@settings(max_examples=300, deadline=None, database=None)
@given(choice=ALLOWED, tools=st.sampled_from([[WEATHER], [WEATHER, TIME, SEARCH], [SEARCH], []]))
def test_any_tool_choice_object_is_served_or_a_400(choice: dict[str, Any], tools: list[dict]) -> None:
    """allowed_tools among them; a type that was not a string (a list) was a TypeError, a 500."""
    try:
        translate(input="x", tools=tools, tool_choice=choice)
        search_tool(parse_model(ResponsesRequest, {"input": "x", "tools": tools, "tool_choice": choice}))
    except ApiError as e:
        assert e.status == 400 and e.param


def test_truncation_halves_the_conversation_keeps_the_instructions_and_drops_orphaned_results() -> None:
    said = lambda role, text: {"role": role, "content": text}  # noqa: E731
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                  "function": {"name": "f", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    body = {"messages": [said("system", "Be brief."), said("user", "a"), call, result, said("user", "b")],
            "stream": False}
    cut = truncated(body)
    assert cut is not None and cut["messages"] == [said("system", "Be brief."), said("user", "b")]  # no orphan
    assert cut["stream"] is False and len(body["messages"]) == 5  # the original untouched
    assert truncated(cut) is None  # the last message is never dropped
    six = {"messages": [said("user", str(i)) for i in range(6)]}
    assert [m["content"] for m in truncated(six)["messages"]] == ["3", "4", "5"]  # type: ignore[index]
    # a result later than the cut, whose call was dropped (a message came between them), goes too: kept, the
    # conversation asked again was refused as chat's 400 (messages.[1].role), a Responses caller's to puzzle over
    between = {"messages": [said("user", "a" * 50), call, said("user", "b"), result, said("user", "c")]}
    assert truncated(between) == {"messages": [said("user", "b"), said("user", "c")]}


@pytest.mark.parametrize(("refusal", "share"), [
    # vLLM: the answer's tokens are asked for too, so the messages get what they leave
    ("uid 1: HTTP 400: This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
     "(1000 in the messages, 4000 in the completion).", 0.9 * 96 / 1000),
    ("This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.",
     0.9 * 128000 / 130000),  # OpenAI's words
    ("The input (5000 tokens) is longer than the model's context length (4096 tokens).", 0.9 * 4096 / 5000),  # SGLang
    ("the request exceeds the available context size, try increasing it", 0.5),  # llama.cpp gives no numbers
])
def test_the_share_kept_comes_from_the_numbers_in_the_refusal(refusal: str, share: float) -> None:
    assert kept_share(refusal) == pytest.approx(share)


def test_truncation_keeps_the_call_of_the_tool_results_that_end_the_conversation() -> None:
    """Results too long to keep with anything before them: their call stays with them (alone, chat servers
    refuse them); a conversation that is only that call and its results is not cut at all."""
    said = lambda role, text: {"role": role, "content": text}  # noqa: E731
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in (1, 2)]}
    results = [{"role": "tool", "tool_call_id": f"c{i}", "content": "x" * 500} for i in (1, 2)]
    cut = truncated({"messages": [said("system", "Be brief."), said("user", "a"), said("assistant", "b"), call,
                                  *results]})
    assert cut is not None and cut["messages"] == [said("system", "Be brief."), call, *results]
    assert truncated(cut) is None


def test_truncation_drops_only_as_much_as_the_share_asks() -> None:
    ten = {"messages": [{"role": "user", "content": str(i)} for i in range(10)]}
    assert [m["content"] for m in truncated(ten, 0.85)["messages"]] == [str(i) for i in range(2, 10)]  # type: ignore[index]
    assert [m["content"] for m in truncated(ten, 0.01)["messages"]] == ["9"]  # type: ignore[index]


def test_a_tool_result_answers_a_call_in_its_input_or_in_the_conversation_it_continues() -> None:
    """What agents send: the call and its result in the input, or only the result (``previous_response_id``,
    ``conversation``: the call is in the history); none of them is refused as an orphan."""
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    result = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
    for history, sent in (([], [call, result]), ([call], [result])):
        body = chat_body(parse_model(ResponsesRequest, {"input": sent, "tools": [WEATHER]}), history)
        assert body["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    orphan_before = [{"type": "function_call_output", "call_id": "call_0", "output": "old", "id": "fco_0"}]
    for sent, param in (({}, "previous_response_id"), ({"conversation": "conv_1"}, "conversation")):
        with pytest.raises(ApiError) as e:  # in this API's words, naming the field that brought it (chat's check
            # named messages.[0].role, a place a Responses caller has no use for)
            chat_body(parse_model(ResponsesRequest, {"input": "next", "tools": [WEATHER], **sent}), orphan_before)
        assert (e.value.status, e.value.param) == (400, param)
        assert e.value.message.startswith("No tool call found for function call output with call_id call_0.")
        # a conversation's orphan stays until the caller deletes it: the 400 says which item, and how
        assert ("DELETE /v1/conversations/conv_1/items/fco_0" in e.value.message) == (param == "conversation")
