"""Chat completions and legacy completions through the real API app, read as the OpenAI SDK's own
types read them.

The SDK builds its objects without validating them: a field it requires and the gateway left out
(or a value outside one of its ``Literal`` types) is no error to the caller, just a ``None`` or a
string no ``match`` expects. So each test here validates the raw body, and every streamed chunk,
with the SDK's pydantic models (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``), strictly."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from api.tool_finish import named_choice
from tests.helpers import ApiUnderTest, Script, api_with_miners, call, openai_client, post, sse, wait_until

MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALLED = [*MSG, {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": '{"celsius": 21}'}]}]


def data_frames(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (``[DONE]`` included)."""
    return [frame.removeprefix("data: ") for frame in text.split("\n\n") if frame.startswith("data: ")]


async def typed_chat(api: ApiUnderTest, body: dict[str, Any]) -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
    """The completion object and the stream's chunks (with ``include_usage``) for ``body``, each validated
    strictly by the SDK's models; the stream ends with the usage chunk (no choices), then ``[DONE]``."""
    status, _, text = await post(api, {"model": "default", **body})
    assert status == 200, text
    whole = ChatCompletion.model_validate(json.loads(text), strict=True)
    status, _, text = await post(api, {"model": "default", **body, "stream": True,
                                       "stream_options": {"include_usage": True}})
    assert status == 200, text
    frames = data_frames(text)
    assert frames[-1] == "[DONE]", text
    chunks = [ChatCompletionChunk.model_validate(json.loads(f), strict=True) for f in frames[:-1]]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    return whole, chunks


async def typed_completion(api: ApiUnderTest, body: dict[str, Any]) -> tuple[Completion, list[Completion]]:
    """As ``typed_chat``, for ``/v1/completions``. A streamed choice's ``finish_reason`` is null until its
    last chunk, as OpenAI streams it, though the SDK's type (shared with the whole object) has no null."""
    status, _, text = await post(api, {"model": "default", **body}, path="/v1/completions")
    assert status == 200, text
    whole = Completion.model_validate(json.loads(text), strict=True)
    status, _, text = await post(api, {"model": "default", **body, "stream": True,
                                       "stream_options": {"include_usage": True}}, path="/v1/completions")
    assert status == 200, text
    frames = data_frames(text)
    assert frames[-1] == "[DONE]", text
    chunks = []
    for frame in frames[:-1]:
        obj = json.loads(frame)
        obj["choices"] = [c | {"finish_reason": c["finish_reason"] or "stop"} for c in obj["choices"]]
        chunks.append(Completion.model_validate(obj, strict=True))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    return whole, chunks


@pytest.mark.parametrize("body", [
    {"messages": MSG},
    {"messages": MSG, "max_completion_tokens": 5, "stop": "zzz"},
    {"messages": MSG, "stop": ["zzz", "yyy"], "seed": 3, "temperature": 0.5, "top_p": 0.9, "user": "u-1"},
    {"messages": MSG, "n": 2},
    {"messages": MSG, "logprobs": True, "top_logprobs": 2},
    {"messages": MSG, "n": 2, "logprobs": True, "top_logprobs": 1},
    {"messages": MSG, "tools": [WEATHER, TIME]},
    {"messages": MSG, "tools": [WEATHER | {"function": WEATHER["function"] | {"strict": True}}],
     "tool_choice": "required", "parallel_tool_calls": False},
    {"messages": MSG, "tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
    {"messages": MSG, "tools": [WEATHER], "n": 2},
    {"messages": CALLED, "tools": [WEATHER]},
    {"messages": MSG, "response_format": {"type": "json_schema", "json_schema": {
        "name": "weather", "strict": True, "schema": WEATHER["function"]["parameters"]}}},
    {"messages": MSG, "response_format": {"type": "json_object"}},
    {"messages": [{"role": "developer", "content": "Be brief.", "name": "ops"},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}],
                   "name": "bob"}]},
    {"messages": MSG, "prediction": {"type": "content", "content": "It is sunny"}, "store": False,
     "metadata": {"team": "a"}, "service_tier": "auto", "prompt_cache_key": "k1", "safety_identifier": "s1",
     "verbosity": "low", "reasoning_effort": "minimal", "modalities": ["text"], "logit_bias": {"1734": -100}},
    {"messages": MSG, "web_search_options": {"search_context_size": "low"}},
    {"messages": MSG, "web_search_options": {}, "n": 2},
], ids=["plain", "max_completion_tokens", "sampling", "n2", "logprobs", "n2-logprobs", "tools", "required-strict",
        "named-tool", "n2-tools", "tool-result", "json_schema", "json_object", "developer-parts", "accepted-fields",
        "web-search", "n2-web-search"])
async def test_every_chat_feature_validates_under_the_sdk_types(honest: ApiUnderTest, body: dict[str, Any]) -> None:
    whole, chunks = await typed_chat(honest, body)
    n = body.get("n", 1)
    assert [c.index for c in whole.choices] == list(range(n))
    assert {c.index for chunk in chunks for c in chunk.choices} == set(range(n))
    assert whole.usage is not None and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    ends = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(ends) == sorted(c.finish_reason for c in whole.choices)
    for choice in whole.choices:
        if choice.finish_reason == "tool_calls":
            assert choice.message.content is None and choice.message.tool_calls
        if body.get("logprobs"):
            assert choice.logprobs is not None and choice.logprobs.content
        if "web_search_options" in body:  # (where an answer names a source: test_responses_web_search.py)
            assert choice.message.annotations is not None
    calls = [tc for chunk in chunks for c in chunk.choices for tc in c.delta.tool_calls or []]
    for (_, index), deltas in _by_call(chunks).items():
        assert deltas[0].id and deltas[0].type == "function", "a call's first delta names it"
        assert all(d.index == index for d in deltas)
    named = named_choice(body.get("tool_choice"))  # OpenAI ends a call of the function it names "stop"
    assert bool(calls and not named) == any(c.finish_reason == "tool_calls" for c in whole.choices)


@pytest.mark.parametrize("n", [1, 2])
async def test_logprobs_name_both_lists_streamed_or_not(honest: ApiUnderTest, n: int) -> None:
    """OpenAI's ``logprobs`` has both lists, ``content`` and ``refusal`` (null when empty), and the Node SDK's
    types require both. A miner's streamed chunks (vLLM's, the deterministic model's) carry ``content`` alone,
    and were relayed so; the Python SDK's types default the missing one, so ``typed_chat`` cannot tell."""
    body = {"model": "default", "messages": MSG, "logprobs": True, "top_logprobs": 1, "n": n}
    status, _, text = await post(honest, body)
    assert status == 200 and all(set(c["logprobs"]) == {"content", "refusal"} for c in json.loads(text)["choices"])
    status, _, text = await post(honest, body | {"stream": True})
    streamed = [c["logprobs"] for frame in data_frames(text)[:-1] for c in json.loads(frame)["choices"]
                if c.get("logprobs")]
    assert streamed and all(set(lp) == {"content", "refusal"} and lp["refusal"] is None for lp in streamed), streamed


def _by_call(chunks: list[ChatCompletionChunk]) -> dict[tuple[int, int], list[Any]]:
    """Each tool call's deltas, keyed by (choice, call index)."""
    out: dict[tuple[int, int], list[Any]] = {}
    for chunk in chunks:
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                out.setdefault((c.index, tc.index), []).append(tc)
    return out


@pytest.mark.parametrize("body", [
    {"prompt": "Name a river."},
    {"prompt": ["Name a river.", "Name a hill."], "n": 2, "max_tokens": 8, "stop": "\n"},
    {"prompt": "Name a river.", "echo": True, "seed": 2, "user": "u-1", "logit_bias": {"50256": -100}},
    {"prompt": "Name a river.", "logprobs": 2, "best_of": 1},
    {"prompt": "Name a river.", "logprobs": 0, "n": 2, "best_of": 2},
], ids=["plain", "batch-n2", "echo", "logprobs", "n2-logprobs-best_of"])
async def test_every_completions_feature_validates_under_the_sdk_types(honest: ApiUnderTest,
                                                                     body: dict[str, Any]) -> None:
    whole, chunks = await typed_completion(honest, body)
    prompts = [body["prompt"]] if isinstance(body["prompt"], str) else body["prompt"]
    answers = len(prompts) * body.get("n", 1)
    assert [c.index for c in whole.choices] == list(range(answers))
    assert {c.index for chunk in chunks for c in chunk.choices} == set(range(answers))
    assert whole.object == "text_completion" and whole.usage is not None
    for choice in whole.choices:
        assert choice.text.startswith(prompts[0]) == bool(body.get("echo"))
        if "logprobs" in body:
            assert choice.logprobs is not None and choice.logprobs.tokens
            assert len(choice.logprobs.tokens) == len(choice.logprobs.text_offset or [])


def scripted(*chunks: dict[str, Any]) -> Script:
    """A miner that streams these chunks (each a choice's delta, finish reason and the rest), then [DONE]."""
    frames = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                          "choices": [{"index": 0, "logprobs": None, "finish_reason": None} | c]}) for c in chunks]
    return Script([(0, d) for d in sse(*frames)])


@pytest.mark.parametrize("sent_id", [None, "call_same"], ids=["no-id", "one-id-for-both"])
async def test_each_tool_call_gets_an_id_of_its_own(tmp_path: Path, sent_id: str | None) -> None:
    """A model server that names no call id (the stream's type allows it) left ``"id": null`` in the
    object the API builds: the SDK's type requires a string, and the caller's next turn names the call
    by it in ``tool_call_id``, which must be a string. Streamed, the calls had no id at all (LangChain's
    streaming agent then had none to answer with). One that gave both calls the same id passed it on: the
    caller's two tool results then named one call, and which answered which could not be told."""
    given = {} if sent_id is None else {"id": sent_id}
    call = {"delta": {"tool_calls": [{"index": 0, **given, "function": {"name": "get_weather", "arguments": "{}"}},
                                     {"index": 1, **given, "function": {"name": "get_weather", "arguments": "{}"}}]}}
    async with api_with_miners(tmp_path, {1: scripted(call, {"delta": {}, "finish_reason": "tool_calls"})}) as api:
        for n in (1, 2):
            status, _, text = await post(api, {"messages": MSG, "tools": [WEATHER], "n": n})
            assert status == 200, text
            whole = ChatCompletion.model_validate(json.loads(text), strict=True)
            ids = [tc.id for c in whole.choices for tc in c.message.tool_calls or []]
            assert len(ids) == 2 * n and all(i.startswith("call_") for i in ids)
            for choice in whole.choices:  # the choices are alternatives: a caller answers one choice's calls
                own = [tc.id for tc in choice.message.tool_calls or []]
                assert len(set(own)) == 2 and (sent_id is None or own[0] == sent_id), own
        follow_up = [*MSG, whole.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": ids[0], "content": "21C"},
                     {"role": "tool", "tool_call_id": ids[1], "content": "21C"}]
        status, _, text = await post(api, {"messages": follow_up, "tools": [WEATHER]})
        assert status == 200, text
        for n in (1, 2):  # streamed: each call's first delta carries its id, as OpenAI's does
            status, _, text = await post(api, {"messages": MSG, "tools": [WEATHER], "n": n, "stream": True})
            assert status == 200, text
            chunks = [ChatCompletionChunk.model_validate(json.loads(f), strict=True) for f in data_frames(text)[:-1]]
            streamed = {(c.index, tc.index): tc.id for chunk in chunks for c in chunk.choices
                        for tc in c.delta.tool_calls or [] if tc.id}
            assert len(streamed) == 2 * n
            assert all(streamed[(c, 0)] != streamed[(c, 1)] for c in range(n)), streamed
            assert all(i.startswith("call_") for i in streamed.values())


@pytest.mark.parametrize(("said", "meant"), [("eos_token", "stop"), ("stop_sequence", "stop"), ("abort", "stop"),
                                             ("max_tokens", "length"), ("length", "length")])
async def test_a_model_servers_own_finish_reason_reaches_the_caller_in_the_sdks_words(
        tmp_path: Path, said: str, meant: str) -> None:
    """TGI ends with "eos_token", vLLM may with "abort": passed on, the SDK's ``Literal`` refused it and a
    caller's ``finish_reason == "length"`` check missed a cut answer (a strict client's stream, such as
    async-openai's enum, broke on its last chunk)."""
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": said})
    async with api_with_miners(tmp_path, {1: script}) as api:
        reasons = []
        for n in (1, 2):
            status, _, text = await post(api, {"messages": MSG, "n": n})
            assert status == 200, text
            reasons += [c.finish_reason for c in ChatCompletion.model_validate(json.loads(text), strict=True).choices]
        for n in (1, 2):
            status, _, text = await post(api, {"messages": MSG, "n": n, "stream": True})
            chunks = [ChatCompletionChunk.model_validate(json.loads(f), strict=True) for f in data_frames(text)[:-1]]
            reasons += [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
        status, _, text = await post(api, {"prompt": "Hi"}, path="/v1/completions")
        reasons.append(Completion.model_validate(json.loads(text), strict=True).choices[0].finish_reason)
    assert reasons == [meant] * 7


REFUSED = [{"token": "No", "logprob": -0.1, "bytes": [78, 111], "top_logprobs": []},
           {"token": ".", "logprob": -0.2, "bytes": [46], "top_logprobs": []}]


async def test_a_refusals_log_probabilities_are_in_the_answer_streamed_or_not(tmp_path: Path) -> None:
    """OpenAI gives a refusal's token log probabilities as ``logprobs.refusal``; the object the API
    builds kept only ``content``'s, so a refusal's were dropped (``logprobs: null``) unless streamed."""
    script = scripted({"delta": {"refusal": "No"}, "logprobs": {"content": None, "refusal": REFUSED[:1]}},
                      {"delta": {"refusal": "."}, "logprobs": {"content": None, "refusal": REFUSED[1:]}},
                      {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        whole, chunks = await typed_chat(api, {"messages": MSG, "logprobs": True})
    (choice,) = whole.choices
    assert choice.message.refusal == "No." and choice.message.content is None
    assert choice.logprobs is not None and choice.logprobs.content is None
    assert [t.model_dump() for t in choice.logprobs.refusal or []] == REFUSED
    streamed = [t for c in chunks for ch in c.choices if ch.logprobs for t in ch.logprobs.refusal or []]
    assert streamed == choice.logprobs.refusal


def usage_chunk(usage: dict[str, Any]) -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted", "choices": [],
                       "usage": usage})


@pytest.mark.parametrize(("sent", "given"), [
    ({"completion_tokens": 3}, {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}),
    ({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "prompt_tokens_details": "n/a",
      "completion_tokens_details": {"reasoning_tokens": "n/a", "audio_tokens": 0}, "queue_ms": "x"},
     {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "completion_tokens_details": {"audio_tokens": 0}}),
    ({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "prompt_tokens_details": None,
      "completion_tokens_details": {"reasoning_tokens": 1}},
     {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 1}}),
], ids=["only-completion-tokens", "details-not-counts", "null-details"])
async def test_a_miners_usage_is_given_as_the_sdks_type_has_it(tmp_path: Path, sent: dict, given: dict) -> None:
    """A model server that counts only completion tokens left out the two counts the SDK's type requires;
    a details group that was not token counts ("n/a") went on as it came: the caller's type checks and
    LangChain's sums of usage details failed on it."""
    frames = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                          "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
              usage_chunk(sent)]
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(*frames)])}) as api:
        status, _, text = await post(api, {"messages": MSG})
        assert status == 200, text
        usage = ChatCompletion.model_validate(json.loads(text), strict=True).usage
        assert usage is not None and usage.model_dump(exclude_none=True) == given
        # streamed, one choice: the winner's chunks go on as they came, but for its usage, given the same way
        status, _, text = await post(api, {"messages": MSG, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, text
    chunks = [ChatCompletionChunk.model_validate(json.loads(f), strict=True) for f in data_frames(text)[:-1]]
    assert [c.usage.model_dump(exclude_none=True) for c in chunks if c.usage] == [given]


async def test_a_streamed_usage_that_is_not_token_counts_is_replaced_by_an_estimate(tmp_path: Path) -> None:
    """Relayed as it came, a usage of "n/a" counts broke a strict client's stream, and the API's own
    estimate followed it: two usage chunks, one unreadable."""
    frames = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                          "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
              usage_chunk({"prompt_tokens": "n/a", "completion_tokens": 3, "total_tokens": 5})]
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(*frames)])}) as api:
        status, _, text = await post(api, {"messages": MSG, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, text
    chunks = [ChatCompletionChunk.model_validate(json.loads(f), strict=True) for f in data_frames(text)[:-1]]
    usages = [c.usage for c in chunks if c.usage]
    assert len(usages) == 1 and usages[0].model_extra == {"estimated": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"


async def test_n_choices_add_up_their_usage_details(tmp_path: Path) -> None:
    """The prompt's cached tokens once (every choice answered the same prompt), every choice's reasoning
    tokens: the request's usage dropped both."""
    frames = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                          "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
              usage_chunk({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                           "prompt_tokens_details": {"cached_tokens": 8},
                           "completion_tokens_details": {"reasoning_tokens": 2}})]
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(*frames)])}) as api:
        whole, chunks = await typed_chat(api, {"messages": MSG, "n": 3})
        status, _, text = await post(api, {"prompt": "Hi", "n": 2}, path="/v1/completions")
    assert status == 200, text
    text_usage = Completion.model_validate(json.loads(text), strict=True).usage
    for usage, n in ((whole.usage, 3), (chunks[-1].usage, 3), (text_usage, 2)):
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 3 * n)
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 8
        assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 2 * n


async def test_estimated_usage_counts_the_thinking_as_reasoning_tokens(tmp_path: Path) -> None:
    """With no usage from the miner, the Responses API's estimate counted a reasoning model's thinking as
    reasoning tokens; chat completions' did not (``completion_tokens_details`` missing), so LangChain's
    ``output_token_details.reasoning`` was absent for the same answer."""
    script = scripted({"delta": {"reasoning_content": "Paris is in France."}}, {"delta": {"content": "Paris."}},
                      {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        whole, chunks = await typed_chat(api, {"messages": MSG})
        status, _, text = await post(api, {"messages": MSG, "n": 2})
    assert status == 200, text
    both = ChatCompletion.model_validate(json.loads(text), strict=True)
    assert whole.choices[0].message.model_extra == {"reasoning_content": "Paris is in France."}
    for usage, n in ((whole.usage, 1), (chunks[-1].usage, 1), (both.usage, 2)):
        assert usage is not None and usage.model_extra == {"estimated": True}
        assert usage.completion_tokens_details is not None
        assert usage.completion_tokens_details.reasoning_tokens == 5 * n  # 19 characters: ~4 a token
        assert usage.completion_tokens == (5 + 2) * n


@pytest.mark.parametrize(("extra", "param"), [
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"modalities": ["audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
])
async def test_audio_output_is_a_400_naming_the_field_not_ignored(tmp_path: Path, extra: dict, param: str) -> None:
    """Accepted, the answer came back as text alone: ``message.audio`` was null for a caller who asked for
    it (``completion.choices[0].message.audio.data`` an AttributeError), and no miner was at fault."""
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        with pytest.raises(openai.BadRequestError) as e:
            await openai_client(api).chat.completions.create(model="default", messages=MSG, **extra)
        text_only = await openai_client(api).chat.completions.create(model="default", messages=MSG, modalities=["text"],
                                                           extra_body={"audio": None})
    assert e.value.param == param and "text" in e.value.message
    assert text_only.choices[0].message.content == "Hi" and script.calls == 1


@pytest.mark.parametrize("stream", [False, None])
async def test_stream_options_without_stream_is_a_400_as_at_openai(tmp_path: Path, stream: bool | None) -> None:
    """Ignored, a caller's ``include_usage`` on a request that does not stream seemed to work here and was
    OpenAI's (and vLLM's) 400: the code moved to OpenAI broke. With ``stream: true`` it is served."""
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        client = openai_client(api)
        with pytest.raises(openai.BadRequestError) as chat:
            await client.chat.completions.create(model="default", messages=MSG, stream=stream,
                                                 stream_options={"include_usage": True})
        with pytest.raises(openai.BadRequestError) as legacy:
            await client.completions.create(model="default", prompt="Hi", stream=stream,
                                            stream_options={"include_usage": True})
        streamed = await client.chat.completions.create(model="default", messages=MSG, stream=True,
                                                        stream_options={"include_usage": True})
        chunks = [c async for c in streamed]
    for refused in (chat.value, legacy.value):
        assert refused.param == "stream_options" and "only allowed when 'stream' is enabled" in refused.message
    assert script.calls == 1 and chunks[-1].usage is not None


def allowed(mode: str, *names: str) -> dict[str, Any]:
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [
        {"type": "function", "function": {"name": name}} for name in names]}}


@pytest.mark.parametrize("mode", ["auto", "required"])
async def test_allowed_tools_limits_the_calls_to_the_functions_it_lists(honest: ApiUnderTest, mode: str) -> None:
    """The SDK's ``ChatCompletionAllowedToolChoiceParam`` was a 400 (the Responses API serves its own
    form). Model servers take no such choice, so the miners are offered only the listed functions."""
    asked = {"messages": MSG, "tools": [WEATHER, TIME]}
    free, _ = await typed_chat(honest, asked)
    assert [c.function.name for c in free.choices[0].message.tool_calls or []] == ["get_weather"]
    whole, chunks = await typed_chat(honest, asked | {"tool_choice": allowed(mode, "get_time")})
    assert [c.function.name for c in whole.choices[0].message.tool_calls or []] == ["get_time"]
    streamed = [tc.function.name for c in chunks for ch in c.choices for tc in ch.delta.tool_calls or []
                if tc.function and tc.function.name]
    assert streamed == ["get_time"]


async def test_what_the_miners_get_for_an_allowed_tools_choice(tmp_path: Path) -> None:
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        out = await openai_client(api).chat.completions.create(model="default", messages=MSG, tools=[WEATHER, TIME],
                                                     tool_choice=allowed("auto", "get_time"))
    assert out.choices[0].message.content == "Hi"
    (body,) = script.bodies
    assert body["tools"] == [TIME] and body["tool_choice"] == "auto"


@pytest.mark.parametrize(("choice", "says"), [
    (allowed("auto", "get_date"), "'get_date', which is not among tools"),
    (allowed("any", "get_time"), '"allowed_tools"'),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}, '"allowed_tools"'),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "custom", "custom": {
        "name": "get_time"}}]}}, '"allowed_tools"'),
    ({"type": "allowed_tools"}, '"allowed_tools"'),
])
async def test_an_allowed_tools_choice_that_lists_no_offered_function_is_a_400(honest: ApiUnderTest, choice: dict,
                                                                              says: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await openai_client(honest).chat.completions.create(model="default", messages=MSG, tools=[WEATHER, TIME],
                                                  tool_choice=choice)  # type: ignore[arg-type]
    assert e.value.param == "tool_choice" and says in e.value.message


@pytest.mark.parametrize(("bias", "says"), [
    ({"hello": -100}, "'hello' is not one"), ({"-1": 5}, "'-1' is not one"), ({"50256": 101}, "from -100 to 100"),
    ({"50256": -100.5}, "from -100 to 100"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_logit_bias_openai_refuses_is_a_400_naming_it(tmp_path: Path, path: str, bias: dict,
                                                              says: str) -> None:
    """A key that is no token id was refused by a model server (its 400) or ignored by a miner that takes
    no logit_bias (a 200 for the same request); a bias past 100 was clamped by one and refused by OpenAI."""
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        with pytest.raises(openai.BadRequestError) as e:
            if path == "/v1/completions":
                await openai_client(api).completions.create(model="default", prompt="Hi", logit_bias=bias)
            else:
                await openai_client(api).chat.completions.create(model="default", messages=MSG, logit_bias=bias)
        for ok in ({"50256": -100, "0": 100}, {}):
            await openai_client(api).chat.completions.create(model="default", messages=MSG, logit_bias=ok)
    assert e.value.param == "logit_bias" and says in e.value.message and script.calls == 2


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": "object"}}},
     "response_format", "JSON Schema object"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {}, "strict": "yes"}}},
     "response_format", "strict must be a boolean"),
    ({"tools": [WEATHER | {"function": WEATHER["function"] | {"strict": "yes"}}]}, "tools.0.function.strict",
     "boolean"),
])
async def test_a_schema_or_strict_flag_of_another_type_is_a_400_naming_it(tmp_path: Path, extra: dict, param: str,
                                                                         says: str) -> None:
    """Passed on, a model server refused them (a schema it cannot compile), or a miner that ignored them
    answered a JSON-schema request with no schema to fit."""
    script = scripted({"delta": {"content": "{}"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        status, _, text = await post(api, {"messages": MSG, **extra})
    error = json.loads(text)["error"]
    assert status == 400 and error["param"] == param and says in error["message"], error
    assert script.calls == 0


def usage_chunk_unasked(total: int) -> str:
    """llama.cpp's last chunk: usage with no choices, sent whether or not the caller asked for it."""
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted", "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": total}})


@pytest.mark.parametrize("asked", [False, True], ids=["not asked", "include_usage"])
async def test_a_usage_chunk_the_caller_did_not_ask_for_is_not_relayed_and_totals_add_up(
        tmp_path: Path, asked: bool) -> None:
    """``for chunk in stream: chunk.choices[0]`` is every tutorial's loop: a usage-only chunk the caller did not
    ask for (a model server that always sends one) raised IndexError in it. OpenAI sends it only with
    ``include_usage``; and its ``total_tokens`` is the sum of the two counts, whatever a miner wrote."""
    from tests.helpers import chunk

    steps = [(0, d) for d in sse(chunk("Hi"), chunk(finish="stop"), usage_chunk_unasked(total=99))]
    async with api_with_miners(tmp_path, {1: Script(steps)}) as api:
        client = openai_client(api)
        options = {"stream_options": {"include_usage": True}} if asked else {}
        chunks = [c async for c in await client.chat.completions.create(model="default", messages=MSG, stream=True,
                                                                        **options)]
        assert all(c.choices for c in chunks[:-1])
        if asked:
            assert chunks[-1].choices == [] and chunks[-1].usage is not None
            assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.total_tokens) == (10, 15)
        else:
            assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks), chunks[-1]
        whole = await client.chat.completions.create(model="default", messages=MSG)
        assert whole.usage is not None and (whole.usage.prompt_tokens, whole.usage.total_tokens) == (10, 15)
        usage = await client.get("/usage", cast_to=object)
        assert usage["totals"]["prompt_tokens"] == 20  # taken either way, as the caller's accounting


@pytest.mark.parametrize("asked", [False, True], ids=["not asked", "include_usage"])
async def test_a_usage_on_the_finish_chunk_reaches_the_caller_as_openais_usage_chunk(tmp_path: Path,
                                                                                     asked: bool) -> None:
    """A model server that puts its usage on the answer's last chunk, beside its ``finish_reason`` (TGI's, an older
    llama.cpp's), and sends no usage-only chunk: the caller who asked for usage got none where OpenAI gives it (a
    last chunk of no choices, which the README's own ``elif chunk.usage`` loop reads), and one who did not got it
    anyway. The usage goes in a chunk of its own when asked for, as OpenAI sends it, and nowhere else."""
    from tests.helpers import chunk

    counts = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    miner = Script([(0, d) for d in sse(chunk("Hi"), chunk(finish="stop", usage=counts))])
    async with api_with_miners(tmp_path, {1: miner}) as api:
        options = {"stream_options": {"include_usage": True}} if asked else {}
        stream = await openai_client(api).chat.completions.create(model="default", messages=MSG, stream=True,
                                                                  **options)
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    given = [c.usage for c in chunks if c.usage is not None]
    if asked:
        assert chunks[-1].choices == [] and given == [chunks[-1].usage], [c.model_dump() for c in chunks]
        assert (given[0].prompt_tokens, given[0].completion_tokens, given[0].total_tokens) == (10, 5, 15)
    else:
        assert given == [] and all(c.choices for c in chunks), [c.model_dump() for c in chunks]


async def test_tool_settings_without_tools_do_not_reach_the_miners(tmp_path: Path) -> None:
    """OpenAI and vLLM refuse tool_choice and parallel_tool_calls without tools, and an empty tools list: passed
    on, every miner's model server refused the request and the caller got its 400. Without tools they mean
    nothing ("auto", "none"), so they are left out; one that needs a tool is still the caller's 400."""
    from tests.helpers import chunk

    miner = Script([(0, d) for d in sse(chunk("Hi"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: miner}) as api:
        for extra in ({"parallel_tool_calls": False}, {"tool_choice": "auto"}, {"tool_choice": "none", "tools": []}):
            status, _, text = await post(api, {"messages": MSG, **extra})
            assert status == 200, (extra, text)
            assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(miner.bodies[-1]), miner.bodies[-1]
        status, _, text = await post(api, {"messages": MSG, "tools": [WEATHER], "parallel_tool_calls": False})
        assert status == 200 and miner.bodies[-1]["parallel_tool_calls"] is False  # with tools: passed on
        status, _, text = await post(api, {"messages": MSG, "tool_choice": "required"})
        assert status == 400 and json.loads(text)["error"]["param"] == "tool_choice"


async def test_the_model_servers_system_fingerprint_is_in_the_object_as_in_the_stream(tmp_path: Path) -> None:
    """A stream relays each chunk's ``system_fingerprint``; the object made of the same answer dropped it."""
    from tests.helpers import chunk

    def printed(text: str | None, finish: str | None = None) -> str:
        return json.dumps(json.loads(chunk(text, finish=finish)) | {"system_fingerprint": "fp_up"})

    miner = Script([(0, d) for d in sse(printed("Hi"), printed(None, finish="stop"))])
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        whole = await client.chat.completions.create(model="default", messages=MSG)
        streamed = [c async for c in await client.chat.completions.create(model="default", messages=MSG, stream=True)]
    assert whole.system_fingerprint == "fp_up" and {c.system_fingerprint for c in streamed} == {"fp_up"}


async def test_a_call_cut_by_the_callers_max_tokens_is_returned_cut_as_openai_does(tmp_path: Path) -> None:
    """A tool call the caller's own ``max_tokens`` cut (``finish_reason: "length"``, its arguments half a JSON
    object) was refused as "not JSON", and the caller got ``502 no_valid_answer`` where OpenAI returns the cut
    call: the caller's code checks ``finish_reason`` and retries with a larger limit. A call of a tool the
    request did not offer is still no answer, cut or not."""
    cut = {"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"city": "Par'}}]}}
    length = {"delta": {}, "finish_reason": "length"}
    body = {"messages": MSG, "tools": [WEATHER], "max_completion_tokens": 5}
    async with api_with_miners(tmp_path, {1: scripted(cut, length)}) as api:
        whole, chunks = await typed_chat(api, body)
        made = await openai_client(api).chat.completions.create(model="default", **body)
        stream = await openai_client(api).chat.completions.create(model="default", **body, stream=True)
        streamed = [c async for c in stream]
    for choice in (whole.choices[0], made.choices[0]):
        assert choice.finish_reason == "length" and choice.message.tool_calls is not None
        assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
            ("get_weather", '{"city": "Par')]
    for got in (chunks, streamed):
        assert "".join(tc.function.arguments or "" for c in got for ch in c.choices for tc in ch.delta.tool_calls or []
                       if tc.function) == '{"city": "Par'
        assert [ch.finish_reason for c in got for ch in c.choices if ch.finish_reason] == ["length"]
    unoffered = {"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "rm_rf", "arguments": '{"path": "/'}}]}}
    async with api_with_miners(tmp_path, {1: scripted(unoffered, length)}) as api:
        for stream_it in (False, True):
            status, _, text = await post(api, {"model": "default", **body, "stream": stream_it})
            assert status == 502 and "no_valid_answer" in text, text



async def test_a_claimed_cut_is_no_answer_without_the_callers_limit_or_when_the_json_was_never_begun(
        tmp_path: Path) -> None:
    """``finish_reason: "length"`` is the miner's own word. Trusted whatever the request, a fast miner won every race
    asking for JSON or a call with prose or a half answer that merely claimed a cut. A cut answer is returned only
    when the caller set a token limit and the cut text begins what was asked (an object for a call's arguments or
    ``json_object``); otherwise it fails that miner, and with no other miner the caller gets the 502."""
    length = {"delta": {}, "finish_reason": "length"}
    json_body = {"messages": MSG, "response_format": {"type": "json_object"}}
    call_body = {"messages": MSG, "tools": [WEATHER]}

    def call(arguments: str) -> dict:
        return {"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": arguments}}]}}

    cases = [  # (script, body, stream modes): each a 502
        (scripted({"delta": {"content": '{"city": "Par'}}, length), json_body, (False,)),  # no caller limit
        (scripted({"delta": {"content": "The weather in Par"}}, length),
         {**json_body, "max_completion_tokens": 5}, (False,)),  # prose claiming a cut
        (scripted(call('{"city": "Par'), length), call_body, (False, True)),  # no caller limit
        (scripted(call('city = "Par'), length), {**call_body, "max_tokens": 5}, (False, True)),  # no object begun
    ]
    for script, body, streams in cases:
        async with api_with_miners(tmp_path, {1: script}) as api:
            for stream_it in streams:
                status, _, text = await post(api, {"model": "default", **body, "stream": stream_it})
                assert status == 502 and "no_valid_answer" in text, (body, stream_it, text)

class City(BaseModel):
    city: str


async def test_a_json_answer_cut_by_the_callers_max_tokens_is_returned_cut_as_openai_does(tmp_path: Path) -> None:
    """A ``response_format`` answer the caller's own ``max_tokens`` cut (``finish_reason: "length"``, half a JSON
    object) was refused as "not JSON", and the caller got ``502 no_valid_answer`` where OpenAI returns the cut
    text: the caller's code checks ``finish_reason`` and retries with a larger limit. Prose that ended on its
    own is still no answer, and a stream of prose still fails at its first word, cut or not."""
    cut = '{"city": "Par'
    length = {"delta": {}, "finish_reason": "length"}
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "city", "strict": True,
                "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                           "additionalProperties": False}}}):
        body = {"messages": MSG, "response_format": fmt, "max_completion_tokens": 5}
        async with api_with_miners(tmp_path, {1: scripted({"delta": {"content": cut}}, length)}) as api:
            whole, chunks = await typed_chat(api, body)
            made = await openai_client(api).chat.completions.create(model="default", **body)
            stream = await openai_client(api).chat.completions.create(model="default", **body, stream=True)
            streamed = [c async for c in stream]
        for choice in (whole.choices[0], made.choices[0]):
            assert (choice.finish_reason, choice.message.content) == ("length", cut), fmt
        for got in (chunks, streamed):
            assert "".join(ch.delta.content or "" for c in got for ch in c.choices) == cut, fmt
            assert [ch.finish_reason for c in got for ch in c.choices if ch.finish_reason] == ["length"], fmt
    async with api_with_miners(tmp_path, {1: scripted({"delta": {"content": cut}}, length)}) as api:
        with pytest.raises(openai.LengthFinishReasonError):  # the SDK's own word for it, not an APIStatusError
            await openai_client(api).chat.completions.parse(model="default", messages=MSG, response_format=City,
                                                            max_completion_tokens=5)
    body = {"messages": MSG, "response_format": {"type": "json_object"}, "max_completion_tokens": 5}
    prose = {"delta": {"content": "The weather in Par"}}
    for script, streams in ((scripted(prose, {"delta": {}, "finish_reason": "stop"}), (False, True)),
                            (scripted(prose, length), (True,))):
        async with api_with_miners(tmp_path, {1: script}) as api:
            for stream_it in streams:
                status, _, text = await post(api, {"model": "default", **body, "stream": stream_it})
                assert status == 502 and "no_valid_answer" in text, text


STRICT_CITY = {"type": "json_schema", "json_schema": {"name": "city", "strict": True, "schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"], "additionalProperties": False}}}


async def test_an_answer_no_miner_can_fit_is_not_retried_by_the_sdk_and_a_miner_down_still_is(tmp_path: Path) -> None:
    """A strict ``json_schema`` that every miner's answer missed (prose, or JSON without a required field) was a
    502 the OpenAI SDK retries twice by default: the same miners asked the same thing, the caller waited three
    times for one failure. It says ``x-should-retry: false`` now (both SDKs obey it), so the SDK raises at once,
    streamed or not; the 502 of a miner that is down has no such header, and the SDK still retries it."""
    prose = {"delta": {"content": "I would rather not say."}}
    unfit = {"delta": {"content": '{"city": "Paris"}'}}
    stop = {"delta": {}, "finish_reason": "stop"}
    for script, streams in ((scripted(prose, stop), (False, True)), (scripted(unfit, stop), (False,))):
        async with api_with_miners(tmp_path, {1: script}) as api:
            client = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=2, timeout=20)
            for stream_it in streams:
                asked = script.calls
                with pytest.raises(openai.InternalServerError) as raised:
                    await client.chat.completions.create(model="default", messages=MSG, response_format=STRICT_CITY,
                                                         stream=stream_it)
                assert raised.value.status_code == 502 and raised.value.code == "no_valid_answer"
                assert raised.value.response.headers["x-should-retry"] == "false"
                assert script.calls - asked == 1, "asked once: the SDK did not retry"
    down = Script([], status=500)
    async with api_with_miners(tmp_path, {1: down}) as api:
        client = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=2, timeout=20)
        with pytest.raises(openai.InternalServerError) as raised:
            await client.chat.completions.create(model="default", messages=MSG, response_format=STRICT_CITY)
        assert raised.value.status_code == 502 and "x-should-retry" not in raised.value.response.headers
        assert down.calls == 3, "a miner down is worth the SDK's two retries"


async def test_a_chat_answer_names_the_tier_that_served_it_as_the_responses_api_does(tmp_path: Path) -> None:
    """OpenAI's chat completion names the tier that served it (``"default"``), as its response does, whatever
    ``service_tier`` asked; here the chat answer left it out (the SDK's ``service_tier`` None) while the Responses
    API said ``"default"``, for one request to one miner. Both say ``"default"`` now, ``n`` choices too, whatever
    the miner's chunks claimed (its upstream's ``"priority"``); a stream's chunks carry none (README)."""
    frames = [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                          "service_tier": "priority", "choices": [{"index": 0, "finish_reason": None} | c]})
              for c in ({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})]
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(*frames)])}) as api:
        client = openai_client(api)
        for n in (1, 2):
            chat = await client.chat.completions.create(model="default", messages=MSG, service_tier="priority", n=n)
            assert chat.service_tier == "default" and len(chat.choices) == n
        response = await client.responses.create(model="default", input="Hi", service_tier="priority")
        assert response.service_tier == chat.service_tier
        stream = await client.chat.completions.create(model="default", messages=MSG, stream=True,
                                                      stream_options={"include_usage": True})
        assert {c.service_tier async for c in stream} == {None}


def hostile_frames() -> list[str]:
    """A miner's stream whose envelope is the miner's mischief: an id for each chunk (a number, then strings),
    a ``created`` that is no time, another object's name, a fingerprint object, a tier of its own, a delta that
    says it is the system's with an ``audio`` of 5, and a token's log probability whose ``bytes`` is a string."""
    head = {"object": "chat.completion", "model": "scripted", "system_fingerprint": {"build": 1},
            "service_tier": "evil"}
    said = {"index": 0, "delta": {"role": "system", "content": "Hi", "audio": 5}, "finish_reason": None,
            "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}}
    return [json.dumps(head | {"id": 123, "created": "yesterday", "choices": [said]}),
            json.dumps(head | {"id": "evil-2", "created": -5, "choices": [{"index": 0, "delta": {"content": " there"}}]}),
            json.dumps(head | {"id": "evil-3", "created": 0,
                               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]


async def test_a_miners_envelope_does_not_reach_the_caller(tmp_path: Path) -> None:
    """Each chunk of a streamed answer went to the caller with the miner's id, time, object, fingerprint and tier as
    the miner wrote them: the id changed mid-stream (OpenAI's is one per answer, and a caller keeps the answer
    by it), and the SDK's ``model_dump`` warned in the caller's process of each field out of its type. The
    answer's id and time are now the API's, the same on every chunk and on the usage chunk it adds, and unique
    to the answer (a miner's "c" was every one of its answers' id)."""
    miner = Script([(0, d) for d in sse(*hostile_frames())])
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        ids = set()
        for _ in range(2):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                stream = await client.chat.completions.create(model="default", messages=MSG, stream=True, logprobs=True,
                                                              stream_options={"include_usage": True})
                chunks = [c async for c in stream]
                for c in chunks:
                    c.model_dump()
                whole = await client.chat.completions.create(model="default", messages=MSG, logprobs=True)
                whole.model_dump()
            assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
            ids |= {chunks[0].id, whole.id}
            assert chunks[0].id.startswith("chatcmpl-") and abs(chunks[0].created - time.time()) < 60
            assert {c.object for c in chunks} == {"chat.completion.chunk"}
            assert {c.system_fingerprint for c in chunks} == {None} and {c.service_tier for c in chunks} == {None}
            assert {ch.delta.role for c in chunks for ch in c.choices} <= {"assistant", None}
            assert "".join(ch.delta.content or "" for c in chunks for ch in c.choices) == "Hi there"
            assert whole.choices[0].message.content == "Hi there"
        assert len(ids) == 4, "every answer has an id of its own"


async def test_a_model_servers_own_envelope_passes_byte_for_byte_and_stays_one(tmp_path: Path) -> None:
    """A model server's stream (vLLM's id, "chatcmpl-" and 32 hex digits, and the time it answered) was re-encoded
    chunk by chunk to put the API's id on it, 13% of the API's instructions a streamed request: such a first
    chunk's id and time are now the answer's, and its chunks go to the caller as they came. A later chunk with
    another id or time is still put in the first one's, and an answer whose first id is too short to be one of
    its own (Ollama's "chatcmpl-123") gets the API's."""
    now = int(time.time())
    own = "chatcmpl-" + "0123456789abcdef" * 2
    frames = [json.dumps({"id": own, "object": "chat.completion.chunk", "created": now, "model": "scripted",
                          "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                       "logprobs": None, "finish_reason": None}]}),
              json.dumps({"id": "chatcmpl-other", "object": "chat.completion.chunk", "created": now + 5,
                          "model": "scripted", "choices": [{"index": 0, "delta": {"content": " there"}}]}),
              json.dumps({"id": own, "object": "chat.completion.chunk", "created": now, "model": "scripted",
                          "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})]
    short = [f.replace(own, "chatcmpl-123") for f in (frames[0], frames[2])]
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(*frames)]),
                                          2: Script([(0, d) for d in sse(*short)])}) as api:
        status, _, text = await post(api, {"model": "default", "messages": MSG, "stream": True, "uids": [1]})
        assert status == 200, text
        datas = [line[6:] for line in text.splitlines() if line.startswith("data: {")]
        assert datas[0] == frames[0] and datas[2] == frames[2], "the model server's own chunks, byte for byte"
        second = json.loads(datas[1])
        assert (second["id"], second["created"]) == (own, now), "the first chunk's id and time, on every chunk"
        status, _, text = await post(api, {"model": "default", "messages": MSG, "stream": True, "uids": [2]})
        ids = {json.loads(line[6:])["id"] for line in text.splitlines() if line.startswith("data: {")}
        assert len(ids) == 1 and ids != {"chatcmpl-123"}, ids


@pytest.mark.parametrize("token", [
    {"token": "Hi", "logprob": -0.1, "bytes": "y", "top_logprobs": []},
    {"token": "Hi", "logprob": "low", "bytes": None, "top_logprobs": []},
    {"token": "Hi", "logprob": -0.1, "bytes": None, "top_logprobs": [{"token": "Hi", "logprob": None}]},
], ids=["bytes-string", "logprob-string", "top-logprob-null"])
async def test_a_miners_log_probabilities_out_of_the_sdks_type_are_no_answer(tmp_path: Path, token: dict) -> None:
    """A token's log probability the SDK types as a number, and its ``bytes`` as integers, went to the caller as
    the miner wrote them (``model_dump`` warned in the caller's process); such an answer is now the miner's failure.
    """
    bad = scripted({"delta": {"content": "Hi"}, "logprobs": {"content": [token]}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: bad}) as api:
        status, _, text = await post(api, {"messages": MSG, "logprobs": True, "uids": [1]})
    assert status == 502 and "logprob" in json.loads(text)["error"]["message"], text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_miners_usage_past_what_the_request_and_answer_hold_is_not_charged(tmp_path: Path,
                                                                                  stream: bool) -> None:
    """The key was charged a miner's token counts as it wrote them, up to ten million each: one answer of "Hi
    there" spent any key's daily token limit, and showed the caller twenty million tokens. A count is now at
    most a token a byte of the request (the prompt) and of the answer (the completion); a plausible one stands."""
    said = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                       "choices": [{"index": 0, "delta": {"content": "Hi there"}, "finish_reason": "stop"}]})
    inflated = Script([(0, d) for d in sse(said, usage_chunk({"prompt_tokens": 10**7, "completion_tokens": 10**7,
                                                               "prompt_tokens_details": {"cached_tokens": 10**7}}))])
    plausible = Script([(0, d) for d in sse(said, usage_chunk({"prompt_tokens": 9, "completion_tokens": 2}))])
    async with api_with_miners(tmp_path, {1: inflated, 2: plausible}) as api:
        body = {"messages": MSG, "stream": stream} | ({"stream_options": {"include_usage": True}} if stream else {})
        counts = []
        for uid in (1, 2):
            status, _, text = await post(api, body | {"uids": [uid]})
            assert status == 200, text
            usage = json.loads(data_frames(text)[-2] if stream else text)["usage"]
            counts.append((usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]))
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            assert cached <= usage["prompt_tokens"], usage
        status, used = await call(api, "GET", "/v1/usage")
    assert status == 200
    (prompt, completion, total), plain = counts
    assert plain == (9, 2, 11), "a count the request and the answer can hold is the miner's"
    assert prompt < 2_000 and completion <= len("Hi there") + 64 and total == prompt + completion, counts
    charged = used["totals"]["prompt_tokens"] + used["totals"]["completion_tokens"]
    assert charged == total + 11, used["totals"]


LEGACY = {"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
LEGACY_TIME = {"name": "get_time", "description": "The local time in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def legacy_stream_call(chunks: list[ChatCompletionChunk], index: int = 0) -> tuple[str, str]:
    """The name and arguments a legacy stream's ``delta.function_call`` pieces make for choice ``index``: the name
    in the first piece alone, then the arguments in pieces; no ``tool_calls`` delta on the way."""
    pieces = [c.delta.function_call for chunk in chunks for c in chunk.choices
              if c.index == index and c.delta.function_call is not None]
    assert pieces and pieces[0].name and all(p.name is None for p in pieces[1:]), pieces
    assert all(c.delta.tool_calls is None for chunk in chunks for c in chunk.choices)
    return pieces[0].name, "".join(p.arguments or "" for p in pieces)


@pytest.mark.parametrize(("extra", "called", "ends"), [
    ({"functions": [LEGACY]}, "get_weather", "function_call"),
    ({"functions": [LEGACY, LEGACY_TIME], "function_call": {"name": "get_time"}}, "get_time", "stop"),
    ({"functions": [LEGACY], "function_call": "auto", "n": 2}, "get_weather", "function_call"),
    ({"functions": [LEGACY, LEGACY_TIME], "function_call": {"name": "get_time"}, "n": 2}, "get_time", "stop"),
    ({"functions": [LEGACY], "function_call": "none"}, None, "stop"),
    ({"functions": [LEGACY], "web_search_options": {}}, "get_weather", "function_call"),
], ids=["auto", "forced", "n2", "n2-forced", "none", "web-search"])
async def test_legacy_functions_are_answered_with_a_function_call(honest: ApiUnderTest, extra: dict,
                                                                  called: str | None, ends: str) -> None:
    """OpenAI's deprecated ``functions`` and ``function_call`` (older LangChain, agent frameworks, tutorials) are
    served through the miners' tools: the answer's call is ``message.function_call`` with ``finish_reason:
    "function_call"`` (``"stop"`` for a call the caller forced, as OpenAI ends one) and no ``tool_calls``, and a
    stream sends it as ``delta.function_call`` pieces (the name, then the arguments), each validated strictly by
    the SDK's types. It was a 400 ``unsupported_parameter``; a forced call then ended ``function_call``."""
    whole, chunks = await typed_chat(honest, {"messages": MSG, **extra})
    for choice in whole.choices:
        assert choice.message.tool_calls is None
        if called is None:
            assert choice.finish_reason == "stop" and choice.message.content and choice.message.function_call is None
            continue
        assert choice.finish_reason == ends and choice.message.content is None
        assert choice.message.function_call.name == called
        assert "city" in json.loads(choice.message.function_call.arguments)
        assert legacy_stream_call(chunks, choice.index) == (called, choice.message.function_call.arguments)
    ends = sorted(c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason)
    assert ends == sorted(c.finish_reason for c in whole.choices) and len(ends) == extra.get("n", 1)


async def test_the_sdks_functions_argument_calls_and_continues_a_legacy_conversation(honest: ApiUnderTest) -> None:
    """The OpenAI SDK's own ``functions=`` and ``function_call=``: a call, then the conversation sent back as the
    legacy shape has it (the assistant's ``function_call``, then a ``function`` message with the result), which the
    model answers in text; streamed too. The validator is handed the tools request it became, one it takes."""
    from neurons.validator.payload import OrganicPayload

    payloads: list[dict] = []
    honest.ctx.payload_sinks.append(payloads.append)
    client = openai_client(honest)
    first = await client.chat.completions.create(model="default", messages=MSG, functions=[LEGACY],
                                                 function_call={"name": "get_weather"})
    call = first.choices[0].message.function_call
    assert (first.choices[0].finish_reason, call.name) == ("stop", "get_weather")  # forced: OpenAI's "stop"
    history = [*MSG, first.choices[0].message,  # the SDK's own message object, as OpenAI's cookbook sent it back
               {"role": "function", "name": "get_weather", "content": '{"celsius": 21}'}]
    then = await client.chat.completions.create(model="default", messages=history, functions=[LEGACY])
    assert then.choices[0].finish_reason == "stop" and then.choices[0].message.content
    assert then.choices[0].message.function_call is None
    stream = await client.chat.completions.create(model="default", messages=MSG, functions=[LEGACY], stream=True)
    pieces = [c.choices[0].delta.function_call async for c in stream if c.choices and c.choices[0].delta.function_call]
    assert pieces[0].name == "get_weather" and "".join(p.arguments or "" for p in pieces) == call.arguments
    await wait_until(lambda: len(payloads) >= 3, 10)
    for payload in payloads:
        scored = OrganicPayload.model_validate(payload)  # as the validator's /scoring takes it
        assert "functions" not in scored.body and "function_call" not in scored.body
        assert scored.body["tools"] == [{"type": "function", "function": LEGACY}]
        assert scored.body["parallel_tool_calls"] is False
    assert payloads[0]["body"]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    turns = payloads[1]["body"]["messages"]
    assert [m["role"] for m in turns] == ["user", "assistant", "tool"]
    assert turns[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert turns[2] == {"role": "tool", "tool_call_id": turns[1]["tool_calls"][0]["id"], "content": '{"celsius": 21}'}
    assert "function_call" not in turns[1]


async def test_langchains_legacy_function_calling_parses_the_call(honest: ApiUnderTest, loopback_only: None) -> None:
    """LangChain's legacy path (``bind(functions=..., function_call=...)`` and ``JsonOutputFunctionsParser``, what
    ``create_openai_fn_runnable`` built), invoked and streamed: the call's arguments, parsed."""
    from langchain_core.output_parsers.openai_functions import JsonOutputFunctionsParser
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="default", base_url=honest.url + "/v1", api_key=honest.key, max_retries=0)
    chain = llm.bind(functions=[LEGACY], function_call={"name": "get_weather"}) | JsonOutputFunctionsParser()
    assert await chain.ainvoke('What is the weather in city "Oslo"?') == {"city": "Oslo"}
    streamed = [part async for part in chain.astream('What is the weather in city "Oslo"?')]
    assert streamed[-1] == {"city": "Oslo"}
    message = await llm.bind(functions=[LEGACY]).ainvoke('What is the weather in city "Oslo"?')
    assert message.additional_kwargs["function_call"]["name"] == "get_weather" and not message.tool_calls


async def test_a_miner_that_makes_two_calls_is_no_answer_to_a_legacy_request(tmp_path: Path) -> None:
    """A legacy answer holds one call, as OpenAI's did: the miners are asked with ``parallel_tool_calls: false``,
    and a miner that makes two calls anyway is no answer, streamed or not (the next one answers)."""
    two = scripted({"delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":'}},
    ]}}, {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]}},
        {"delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                   "function": {"name": "get_time", "arguments": "{}"}}]}},
        {"delta": {}, "finish_reason": "tool_calls"})
    body = {"model": "default", "messages": MSG, "functions": [LEGACY, LEGACY_TIME], "uids": [1]}
    async with api_with_miners(tmp_path, {1: two}, honest={2}) as api:
        status, _, text = await post(api, body)
        assert status == 502 and "parallel_tool_calls" in text, text
        assert two.bodies[0]["parallel_tool_calls"] is False and "functions" not in two.bodies[0]
        status, _, text = await post(api, body | {"stream": True})
        assert status == 502 and "parallel_tool_calls" in text, text
        whole, chunks = await typed_chat(api, body | {"uids": None})  # streamed and not
        assert whole.choices[0].message.function_call.name == "get_weather"
        assert legacy_stream_call(chunks)[0] == "get_weather"


@pytest.mark.parametrize(("choice", "miners", "openais"), [
    ("auto", "stop", "function_call"),  # vLLM's and others' word for an answer of calls
    ({"name": "get_weather"}, "tool_calls", "stop"),  # forced: OpenAI's "stop" (openai-node#305)
], ids=["chosen-ended-stop", "forced-ended-tool_calls"])
async def test_a_legacy_calls_finish_reason_is_openais_whatever_the_miner_said(tmp_path: Path, choice: Any,
                                                                               miners: str, openais: str) -> None:
    """A legacy answer's ``finish_reason`` was the miner's, put in legacy words (``tool_calls`` as
    ``function_call``): a chosen call from a model server that ends calls ``stop`` read ``stop`` (code that checks
    for ``function_call``, as OpenAI's cookbook did, found no call), and a forced call read ``function_call``,
    which OpenAI never answers to one. Now OpenAI's, streamed and not, through the SDK."""
    call = {"delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}}
    async with api_with_miners(tmp_path, {1: scripted(call, {"delta": {}, "finish_reason": miners})}) as api:
        client = openai_client(api)
        sent = {"model": "default", "messages": MSG, "functions": [LEGACY], "function_call": choice}
        whole = await client.chat.completions.create(**sent)
        assert (whole.choices[0].finish_reason, whole.choices[0].message.function_call.name) == (openais, "get_weather")
        stream = await client.chat.completions.create(**sent, stream=True)
        ends = [c.choices[0].finish_reason async for c in stream if c.choices and c.choices[0].finish_reason]
        assert ends == [openais]


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"functions": [LEGACY], "tools": [WEATHER]}, None,
     "'functions' and 'tools' cannot both be provided. 'functions' is deprecated; use the 'tools' parameter"),
    ({"functions": [LEGACY], "tool_choice": "required"}, None, "'functions' and 'tool_choice' cannot both"),
    ({"tools": [WEATHER], "function_call": {"name": "get_weather"}}, "function_call",
     "'function_call' is only allowed when 'functions' are specified. 'function_call' is deprecated; use the "
     "'tool_choice' parameter instead"),
    ({"function_call": {"name": "get_weather"}}, "function_call",
     "'function_call' is only allowed when 'functions' are specified"),
    ({"functions": [LEGACY], "function_call": {"name": "get_time"}}, "function_call", "'get_time' is not among"),
    ({"functions": [LEGACY], "function_call": "required"}, "function_call", "expected 'none', 'auto' or"),
    ({"functions": [{"name": "get weather"}]}, "functions.0.name", "a function name is 1 to 64"),
    ({"functions": {"name": "get_weather"}}, "functions", "expected an array"),
    ({"functions": [LEGACY], "mixture": True}, "functions", "Mixture mode does not support functions"),
    ({"functions": [LEGACY], "messages": None}, "messages", "Invalid value for 'messages': Input should be a valid list"),
], ids=["with-tools", "with-tool_choice", "function_call-with-tools", "no-functions", "unknown", "required",
        "bad-name", "not-a-list", "mixture", "no-messages"])
async def test_a_legacy_request_openai_refuses_is_a_400_naming_the_field(tmp_path: Path, extra: dict,
                                                                         param: str | None, words: str) -> None:
    """What OpenAI refuses of the legacy fields (both forms at once, a ``function_call`` naming no function offered)
    is a 400 naming the field the caller sent (not ``tools.0.function.name``, which it never sent), streamed or
    not, before any miner is asked; their values that ask for nothing pass. Its ``param`` is OpenAI's: null for
    ``functions`` beside ``tools`` or ``tool_choice`` (two fields; it was ``functions``), ``function_call`` for one
    without ``functions``, beside ``tools`` too (it was the two-fields 400, in other words)."""
    script = scripted({"delta": {"content": "Hi"}}, {"delta": {}, "finish_reason": "stop"})
    async with api_with_miners(tmp_path, {1: script}) as api:
        for stream in (False, True):
            status, _, text = await post(api, {"model": "default", "messages": MSG, "stream": stream, **extra})
            error = json.loads(text)["error"]
            assert (status, error["param"]) == (400, param), text
            assert words in error["message"], text
        assert script.calls == 0
        client = openai_client(api)
        for neutral in ({"tools": [WEATHER], "function_call": "none"}, {"functions": [], "function_call": "auto"}):
            answer = await client.chat.completions.create(model="default", messages=MSG, **neutral)
            assert answer.choices[0].message.content == "Hi"
        assert "functions" not in script.bodies[-1] and "function_call" not in script.bodies[-1]
