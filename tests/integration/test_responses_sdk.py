"""The Responses API through the real API app, read as the OpenAI SDK's own types read it.

The SDK builds its objects without validating them: a field it requires and the gateway left out
is ``None`` to the caller, not an error. So each test here also validates the raw body, and every
streamed event, with the SDK's pydantic models (``Response``, ``ResponseStreamEvent``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import openai
import pytest
from openai.types.responses import Response, ResponseIncludable, ResponseStreamEvent
from pydantic import TypeAdapter

from api.responses_wire import Includable
from tests.helpers import (
    ApiUnderTest,
    Script,
    api_with_miners,
    chunk,
    openai_client,
    post,
    response_events,
    sse,
)

EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


# OpenAI's response objects carry ``store``, which the SDK's ``Response`` does not model.
NOT_IN_THE_SDK = {"store"}


def response_of(obj: dict[str, Any]) -> Response:
    """``obj`` read strictly by the SDK's ``Response`` (no coercion), every field one the SDK knows: its
    models take unknown fields, so a misspelt echo would pass unseen."""
    assert set(obj) - set(Response.model_fields) <= NOT_IN_THE_SDK, set(obj) - set(Response.model_fields)
    return Response.model_validate(obj, strict=True)


async def typed(api: ApiUnderTest, body: dict[str, Any]) -> tuple[Response, list[Any]]:
    """The response object and the stream's events for ``body``, each validated strictly by the SDK's models."""
    status, _, text = await post(api, {"model": "default", **body}, path="/v1/responses")
    assert status == 200, text
    whole = response_of(json.loads(text))
    status, _, text = await post(api, {"model": "default", **body, "stream": True}, path="/v1/responses")
    assert status == 200, text
    raw = response_events(text)
    for e in raw:
        if "response" in e:
            response_of(e["response"])
    events = [EVENT.validate_python(e, strict=True) for e in raw]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return whole, events


async def test_usage_has_every_detail_the_sdk_requires(honest: ApiUnderTest) -> None:
    whole, events = await typed(honest, {"input": "Hello there"})
    assert events[-1].type == "response.completed"
    for usage in (whole.usage, events[-1].response.usage):
        assert usage is not None and usage.output_tokens > 0
        assert (usage.input_tokens_details.cached_tokens, usage.input_tokens_details.cache_write_tokens) == (0, 0)
    read = await openai_client(honest).responses.create(model="default", input="Hello there")
    assert read.usage is not None and read.usage.input_tokens_details.cache_write_tokens == 0


WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": None}
TIME = {"type": "function", "name": "get_time", "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": None}


async def test_allowed_tools_limits_the_calls_to_the_tools_it_lists(honest: ApiUnderTest) -> None:
    """``tool_choice: {"type": "allowed_tools"}`` (the SDK's ``ToolChoiceAllowed``) was a 400; the
    deterministic miner calls the tool that best fits the question (get_time here) unless only
    get_weather is allowed."""
    asked = {"input": "What time is it in Paris?", "tools": [WEATHER, TIME]}
    free = await openai_client(honest).responses.create(model="default", **asked)
    assert [item.name for item in free.output if item.type == "function_call"] == ["get_time"]
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}
    whole, events = await typed(honest, asked | {"tool_choice": allowed})
    for r in (whole, events[-1].response):
        assert [(item.type, item.name) for item in r.output] == [("function_call", "get_weather")]
        assert r.tool_choice.type == "allowed_tools" and [t.name for t in r.tools] == ["get_weather", "get_time"]
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).responses.create(model="default", **asked, tool_choice=allowed | {
            "tools": [{"type": "function", "name": "get_date"}]})
    assert e.value.param == "tool_choice.tools.0"


async def test_every_reasoning_effort_the_sdk_names_is_served(honest: ApiUnderTest) -> None:
    for effort in ("xhigh", "max"):  # a 400 before, though the SDK's ReasoningEffort names them
        whole, _ = await typed(honest, {"input": "Hello there", "reasoning": {"effort": effort}})
        assert whole.status == "completed" and whole.reasoning is not None and whole.reasoning.effort == effort



def thinking(thought: str) -> str:
    """A chunk of a reasoning model's thinking, as vLLM streams it."""
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "thinker",
                       "choices": [{"index": 0, "delta": {"reasoning_content": thought}, "finish_reason": None}]})


async def test_a_reasoning_models_thinking_is_a_reasoning_item(tmp_path: Path) -> None:
    """Chat completions gave a reasoning model's thinking (``reasoning_content``); the Responses API
    dropped it, streamed or not. It is a ``reasoning`` item before the answer, as OpenAI gives one."""
    steps = sse(thinking("Paris is "), thinking("in France."), chunk("It is Paris."), chunk(finish="stop"))
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
        whole, events = await typed(api, {"input": "Capital of France?"})
        async with openai_client(api).responses.stream(model="default", input="Capital of France?") as stream:
            deltas = [e.delta async for e in stream if e.type == "response.reasoning_text.delta"]
            final = await stream.get_final_response()
    assert deltas == ["Paris is ", "in France."]
    for r in (whole, events[-1].response, final):
        thought, message = r.output
        assert thought.type == "reasoning" and thought.content is not None
        assert [c.text for c in thought.content] == ["Paris is in France."] and thought.status == "completed"
        assert message.type == "message" and r.output_text == "It is Paris."
        # the scripted miner sends no usage: the thinking's estimate is its reasoning tokens
        assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 5
    assert [e.type for e in events[2:10]] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_item.added"]


async def test_an_unknown_item_reference_is_openais_404(honest: ApiUnderTest) -> None:
    """(Known ones: tests/integration/test_item_references.py.)"""
    for ref in ({"type": "item_reference", "id": "msg_1"}, {"id": "msg_1"}):  # the SDK's type is optional
        with pytest.raises(openai.NotFoundError) as e:
            await openai_client(honest).responses.create(model="default", input=[{"role": "user", "content": "Hi"}, ref])
        assert e.value.param == "input" and "Item with id 'msg_1' not found." in e.value.message



async def test_text_and_a_refusal_are_both_in_the_answer_streamed_or_not(tmp_path: Path) -> None:
    """A model that says something, then declines: the stream gave both, the response object only the text."""
    refusal = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                          "choices": [{"index": 0, "delta": {"refusal": "I can't help with that."},
                                       "finish_reason": None}]})
    steps = sse(chunk("Let me see."), refusal, chunk(finish="stop"))
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
        whole, events = await typed(api, {"input": "Help me."})
    for r in (whole, events[-1].response):
        assert [[part.model_dump(include={"type", "text", "refusal"}) for part in item.content] for item in r.output] == [
            [{"type": "output_text", "text": "Let me see."}], [{"type": "refusal", "refusal": "I can't help with that."}]]



async def test_moderation_is_a_400_not_ignored(honest: ApiUnderTest) -> None:
    """Ignored, a policy that blocks flagged input or output let it through without a word."""
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).responses.create(model="default", input="Hi", moderation={
            "model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}, "output": {"mode": "block"}}})
    assert e.value.param == "moderation" and "moderat" in e.value.message
    made = await openai_client(honest).responses.create(model="default", input="Hi", extra_body={"moderation": None})
    assert made.status == "completed"


async def test_an_answer_cut_by_max_output_tokens_is_incomplete_and_says_why(honest: ApiUnderTest) -> None:
    whole, events = await typed(honest, {"input": "Hello there", "max_output_tokens": 16})
    assert events[-1].type == "response.incomplete"
    for r in (whole, events[-1].response):
        assert r.status == "incomplete" and r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens" and r.max_output_tokens == 16
        assert r.completed_at is None  # OpenAI's is set for a completed response only
        assert [(item.type, item.status) for item in r.output] == [("message", "incomplete")]


async def test_a_model_servers_own_word_for_a_cut_is_incomplete_too(tmp_path: Path) -> None:
    """vLLM's and TGI's servers may end a cut answer with their own word (``max_tokens``): read as chat's
    ``length`` (as chat completions do), not as a completed answer."""
    steps = sse(chunk("Hello, th"), chunk(finish="max_tokens"))
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
        whole, events = await typed(api, {"input": "Hello there", "max_output_tokens": 16})
    for r in (whole, events[-1].response):
        assert r.status == "incomplete" and r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"


async def test_a_winner_failing_mid_stream_ends_it_with_response_failed(tmp_path: Path) -> None:
    dies = Script([(0, d) for d in sse(chunk("Hel"), done=False)], die=True)
    async with api_with_miners(tmp_path, {1: dies}) as api:
        status, _, text = await post(api, {"input": "Hi", "stream": True}, path="/v1/responses")
    assert status == 200
    events = [EVENT.validate_python(e) for e in response_events(text)]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.error is not None
    assert failed.response.error.code == "server_error" and "mid-stream" in failed.response.error.message
    assert failed.response.output_text == "Hel"  # what the caller already has


async def test_include_takes_only_the_values_openai_defines(honest: ApiUnderTest) -> None:
    """An unknown ``include`` value (a typo of ``message.output_text.logprobs``, say) was accepted in
    silence and asked for nothing; OpenAI answers it with a 400. Every value the SDK names is taken,
    those for tools not served here changing nothing."""
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).responses.create(model="default", input="Hello there", include=[
            "message.output_text.logprobs", "message.output_text.logprob"])
    assert e.value.param == "include.1" and e.value.code == "invalid_value"
    assert "'message.output_text.logprobs'" in e.value.message, "the 400 lists the values taken"
    assert set(get_args(Includable)) == set(get_args(ResponseIncludable)), "no more and no fewer than the SDK's"
    whole, events = await typed(honest, {"input": "Hello there", "include": list(get_args(ResponseIncludable))})
    for r in (whole, events[-1].response):
        assert r.status == "completed" and r.output[0].content[0].logprobs, "the logprobs still came"


# Each setting OpenAI's response repeats, sent with a value that is not its default.
ASKED = {"instructions": "Be brief.", "max_output_tokens": 50, "max_tool_calls": 3, "metadata": {"team": "docs"},
         "parallel_tool_calls": False, "temperature": 0.3, "top_p": 0.9, "top_logprobs": 2, "tool_choice": "none",
         "truncation": "auto", "user": "u-1", "prompt_cache_key": "k-1", "prompt_cache_retention": "24h",
         "safety_identifier": "s-1", "background": False, "previous_response_id": None}
ECHOED = set(ASKED) | {"service_tier"}


async def test_the_response_repeats_the_settings_it_was_asked_for(honest: ApiUnderTest) -> None:
    """``max_tool_calls``, ``truncation``, ``service_tier``, ``prompt_cache_key``, ``safety_identifier``
    and ``background`` were missing from the response, ``reasoning.summary`` was null and ``truncation``
    "disabled" whatever was sent: a caller reading its settings back (as OpenAI repeats them) read other
    ones. Some say what happened: the response was stored (``store: true``), and there is one service tier."""
    sent = ASKED | {"tools": [WEATHER], "text": {"format": {"type": "text"}, "verbosity": "low"}, "store": True,
                    "reasoning": {"effort": "low", "summary": "concise"}, "service_tier": "flex"}
    whole, events = await typed(honest, {"input": "Hello there"} | sent)
    for r in (whole, events[0].response, events[-1].response):
        assert r.model_dump(include=ECHOED) == ASKED | {"service_tier": "default"}
        assert (r.text.verbosity, r.reasoning.effort, r.reasoning.summary) == ("low", "low", "concise")
        assert [t.name for t in r.tools] == ["get_weather"] and r.store is True  # type: ignore[attr-defined]


async def test_settings_left_out_are_echoed_as_openais_defaults(honest: ApiUnderTest) -> None:
    """Left out, each setting shows OpenAI's default where it shows one; temperature and top_p stay null:
    each miner's model server samples with its own model's default, which the gateway does not know."""
    whole, events = await typed(honest, {"input": "Hello there"})
    for r in (whole, events[0].response, events[-1].response):
        assert r.model_dump(include=ECHOED | {"tools", "text", "reasoning"}) == {
            "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "metadata": {},
            "parallel_tool_calls": True, "temperature": None, "top_p": None, "top_logprobs": 0, "tool_choice": "auto",
            "truncation": "disabled", "user": None, "prompt_cache_key": None, "prompt_cache_retention": None,
            "safety_identifier": None, "background": False, "previous_response_id": None, "service_tier": "default",
            "tools": [], "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "reasoning": {"effort": None, "summary": None, "generate_summary": None, "context": None, "mode": None}}
    # completed_at, as OpenAI's: the time the answer was whole, none while it is in progress
    assert events[0].response.completed_at is None and events[0].response.status == "in_progress"
    for r in (whole, events[-1].response):
        assert r.completed_at is not None and 0 <= r.completed_at - r.created_at <= 5


def call_piece(index: int, arguments: str, *, call_id: str | None = None) -> str:
    """A chunk with a piece of one tool call (its first names it: ``call_id``)."""
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call |= {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]})


async def test_parallel_calls_streamed_interleaved_are_each_done_whole(tmp_path: Path) -> None:
    """Chat streams may interleave parallel calls' pieces (by ``index``): the first call was done (its
    ``function_call_arguments.done`` and ``output_item.done``, which apps run the call on) when the second
    began, with half its arguments (``{"city":``), and its last piece came after its done event."""
    steps = sse(call_piece(0, '{"city":', call_id="call_a"), call_piece(1, '{"city":"Rome"}', call_id="call_b"),
                call_piece(0, '"Paris"}'), chunk(finish="tool_calls"))
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
        _, events = await typed(api, {"input": "Weather in Paris and Rome?", "tools": [WEATHER]})
        async with openai_client(api).responses.stream(model="default", input="Weather?", tools=[WEATHER]) as stream:
            done = [e.item async for e in stream if e.type == "response.output_item.done"]
            final = await stream.get_final_response()
    whole = {"call_a": '{"city":"Paris"}', "call_b": '{"city":"Rome"}'}
    for items in (done, final.output, events[-1].response.output):
        assert {item.call_id: item.arguments for item in items} == whole
    finished_at = {e.output_index: e.sequence_number for e in events if e.type == "response.output_item.done"}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            assert e.sequence_number < finished_at[e.output_index], "a delta after its item was done"
        if e.type == "response.function_call_arguments.done":
            assert json.loads(e.arguments) in ({"city": "Paris"}, {"city": "Rome"})


async def test_a_call_cut_by_max_output_tokens_is_an_incomplete_response(tmp_path: Path) -> None:
    """A function call the caller's ``max_output_tokens`` cut (half its arguments) was refused as "not JSON"
    and the caller got a ``502`` where OpenAI answers ``incomplete`` (``max_output_tokens``) with the cut call."""
    steps = sse(call_piece(0, '{"city": "Par', call_id="call_a"), chunk(finish="length"))
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
        body = {"input": "Weather in Paris?", "tools": [WEATHER], "max_output_tokens": 16}
        whole, events = await typed(api, body)
        made = await openai_client(api).responses.create(model="default", **body)
    assert events[-1].type == "response.incomplete"
    for r in (whole, events[-1].response, made):
        assert r.status == "incomplete" and r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"
        assert [(item.type, item.name, item.arguments, item.status) for item in r.output
                if item.type == "function_call"] == [("function_call", "get_weather", '{"city": "Par', "incomplete")]


async def test_a_json_answer_cut_by_max_output_tokens_is_an_incomplete_response(tmp_path: Path) -> None:
    """A ``text.format`` JSON answer the caller's ``max_output_tokens`` cut (half an object) was refused as "not
    JSON" and the caller got a ``502`` where OpenAI answers ``incomplete`` (``max_output_tokens``) with the cut
    text."""
    cut = '{"city": "Par'
    steps = sse(chunk(cut), chunk(finish="length"))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "name": "city", "strict": True, "schema": schema}):
        async with api_with_miners(tmp_path, {1: Script([(0, d) for d in steps])}) as api:
            body = {"input": "Weather in Paris? Answer in JSON.", "text": {"format": fmt}, "max_output_tokens": 16}
            whole, events = await typed(api, body)
            made = await openai_client(api).responses.create(model="default", **body)
        assert events[-1].type == "response.incomplete", fmt
        for r in (whole, events[-1].response, made):
            assert r.status == "incomplete" and r.incomplete_details is not None, fmt
            assert r.incomplete_details.reason == "max_output_tokens"
            assert r.output_text == cut, fmt


# Chat completions' fields posted to /v1/responses (code moved over from chat, or extra_body): each would change the
# answer, and each was ignored in silence (an answer uncut by max_tokens 5, prose for a JSON response_format).
# OpenAI's Responses API refuses them, naming the field and where it moved.
CHAT_ONLY = [  # (the field, a value that asks for something, what the 400 says to send instead)
    ("messages", [{"role": "user", "content": "Hi"}], "'input'"),
    ("response_format", {"type": "json_object"}, "'text.format'"),
    ("max_tokens", 5, "'max_output_tokens'"),
    ("max_completion_tokens", 5, "'max_output_tokens'"),
    ("reasoning_effort", "low", "'reasoning.effort'"),
    ("verbosity", "low", "'text.verbosity'"),
    ("logprobs", True, "message.output_text.logprobs"),
    ("web_search_options", {}, "web_search"),
    ("functions", [{"name": "get_weather", "parameters": {"type": "object"}}], "'tools'"),
    ("function_call", {"name": "get_weather"}, "'tool_choice'"),
    ("stop", ["a"], "/v1/chat/completions"),
    ("n", 2, "/v1/chat/completions"),
]


@pytest.mark.parametrize(("field", "value", "instead"), CHAT_ONLY, ids=[c[0] for c in CHAT_ONLY])
async def test_chat_completions_fields_are_a_400_saying_where_they_moved(honest: ApiUnderTest, field: str,
                                                                         value: Any, instead: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).responses.create(model="default", input="Hi", extra_body={field: value})
    assert (e.value.status_code, e.value.param, e.value.code) == (400, field, "unsupported_parameter")
    said = e.value.body["message"]  # type: ignore[index]
    assert said.startswith(f"Unsupported parameter: '{field}'.") and instead in said


async def test_chat_fields_that_change_nothing_are_accepted(honest: ApiUnderTest) -> None:
    """The values chat clients send by default (no tools, plain text, one answer), and null, ask for nothing."""
    neutral = {"response_format": {"type": "text"}, "n": 1, "logprobs": False, "stop": None, "functions": [],
               "function_call": "none", "max_tokens": None}
    made = await openai_client(honest).responses.create(model="default", input="Hi", extra_body=neutral)
    assert made.status == "completed"


async def test_a_chat_shaped_function_tool_is_a_400_showing_the_responses_shape(honest: ApiUnderTest) -> None:
    """``{"type": "function", "function": {...}}`` (chat's, as ``openai.pydantic_function_tool`` makes it) was
    'a function tool needs a name', which did not say the name was there, one level down."""
    chat_tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).responses.create(model="default", input="Hi", tools=[chat_tool])  # type: ignore[list-item]
    assert (e.value.param, e.value.code) == ("tools.0.name", "missing_required_parameter")
    said = e.value.body["message"]  # type: ignore[index]
    assert said.startswith("Missing required parameter: 'tools[0].name'.")
    assert '{"type": "function", "name": ' in said and "chat completions" in said
