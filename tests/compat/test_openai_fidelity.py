"""OpenAI fidelity through the real API app with the official SDK: typed errors, headers, usage chunk,
``n``, logprobs, JSON mode and tool calls both ways (streaming and not)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from tests.compat.support import MODEL, fresh_cache, serves
from tests.helpers import ApiUnderTest, Script, api_with_miners, openai_client, sse

MSG = [{"role": "user", "content": "Paris"}]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}]}


def logprob_chunk(text: str, finish: str | None = None) -> str:
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                       "choices": [{"index": 0, "delta": {"content": text} if text else {},
                                    "logprobs": LOGPROBS if text else None, "finish_reason": finish}]})


@pytest.fixture
async def honest(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
        api.ctx.availability = fresh_cache(api, {1: serves([MODEL], ["InferenceTask"]),
                                                 2: serves([MODEL], ["InferenceTask"])})
        yield api


async def test_typed_exceptions_for_401_403_404_429_and_400(honest: ApiUnderTest) -> None:
    async def chat(key: str | None = None, **kw):
        return await openai_client(honest, key).chat.completions.create(**{"model": "default", "messages": MSG, **kw})

    with pytest.raises(openai.AuthenticationError):
        await chat("sn1-not-a-key")
    web_only, _ = await honest.ctx.store.create_key(100, scopes=("web_retrieval",))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(web_only)
    assert denied.value.code == "insufficient_scope"
    with pytest.raises(openai.NotFoundError):
        await chat(model="no/such-model")
    one_per_minute, _ = await honest.ctx.store.create_key(1)
    await chat(one_per_minute)
    with pytest.raises(openai.RateLimitError) as limited:
        await chat(one_per_minute)
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.BadRequestError) as bad:
        await chat(n=9)
    assert bad.value.param == "n" and "n" in bad.value.message


async def test_raw_response_headers_and_request_id_round_trip(honest: ApiUnderTest) -> None:
    raw = await openai_client(honest).chat.completions.with_raw_response.create(
        model="default", messages=MSG, extra_headers={"x-request-id": "compat-rid-1"})
    assert raw.headers["x-request-id"] == "compat-rid-1"
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) < 1000
    assert raw.headers["x-sn1-miner-uid"] in {"1", "2"}


async def test_stream_include_usage_ends_with_a_usage_chunk(honest: ApiUnderTest) -> None:
    stream = await openai_client(honest).chat.completions.create(model="default", messages=MSG, stream=True,
                                                       stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_pass_through_both_ways(honest: ApiUnderTest, stream: bool) -> None:
    client = openai_client(honest)
    if stream:
        s = await client.chat.completions.create(model="default", messages=MSG, tools=WEATHER, stream=True)
        chunks = [c async for c in s]
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        call_id, name = calls[0].id, calls[0].function.name
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        out = await client.chat.completions.create(model="default", messages=MSG, tools=WEATHER)
        assert out.choices[0].finish_reason == "tool_calls" and out.choices[0].message.content is None
        call = out.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    follow_up = MSG + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"celsius": 21}'}]
    final = await client.chat.completions.create(model="default", messages=follow_up, tools=WEATHER)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content


async def test_logprobs_pass_through_and_response_format_reaches_the_miner(tmp_path: Path) -> None:
    script = Script([(0, d) for d in sse(logprob_chunk("Hi"), logprob_chunk("", finish="stop"))])
    async with api_with_miners(tmp_path, {1: script}) as api:
        client = openai_client(api)
        text_format = {"type": "text"}  # (JSON formats are checked: a whole answer must be JSON, "Hi" is not)
        out = await client.chat.completions.create(model="default", messages=MSG, logprobs=True, top_logprobs=1,
                                                   response_format=text_format)
        assert out.choices[0].logprobs.content[0].token == "Hi"
        assert out.choices[0].logprobs.content[0].top_logprobs[0].logprob == -0.25
        sent = script.bodies[-1]
        assert sent["response_format"] == text_format
        assert sent["logprobs"] is True and sent["top_logprobs"] == 1
        stream = await client.chat.completions.create(model="default", messages=MSG, logprobs=True, stream=True)
        streamed = [c.choices[0].logprobs for c in [c async for c in stream] if c.choices and c.choices[0].logprobs]
        assert streamed and streamed[0].content[0].bytes == [72, 105]


async def test_a_base_url_without_or_with_a_doubled_v1_is_told_the_path_that_is_served(honest: ApiUnderTest) -> None:
    """``base_url="http://host:42170"`` (no ``/v1``: the SDK posts ``/chat/completions``) and a tool that adds
    ``/v1`` to a base URL already ending in it (``/v1/v1/models``) are the commonest first mistakes: the 404 named
    only the path asked for, and the newcomer had to guess what was wrong with it."""
    import openai

    bare = openai.AsyncOpenAI(base_url=honest.url, api_key=honest.key, max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError) as missing:
        await bare.chat.completions.create(model="default", messages=MSG)
    assert "Did you mean /v1/chat/completions?" in missing.value.message
    assert "base_url" in missing.value.message
    doubled = openai.AsyncOpenAI(base_url=honest.url + "/v1/v1", api_key=honest.key, max_retries=0, timeout=20)
    with pytest.raises(openai.NotFoundError) as twice:
        await doubled.models.list()
    assert "Did you mean /v1/models?" in twice.value.message
    with pytest.raises(openai.NotFoundError) as unserved:  # a path served under no prefix is told nothing more
        await openai_client(honest).embeddings.create(model="default", input="hi")
    assert "Did you mean" not in unserved.value.message


def call_chunks(finish: str) -> list[str]:
    """A model server's streamed call of get_weather, ended with its own word for it (``finish``)."""
    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    piece = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    return [json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
            for delta, reason in (({"role": "assistant", "tool_calls": [head]}, None), ({"tool_calls": [piece]}, None),
                                  ({}, finish))]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("n", [1, 2])
async def test_a_calls_finish_reason_is_openais_whatever_word_the_miners_server_used(
        tmp_path: Path, stream: bool, n: int) -> None:
    """OpenAI ends a call the model chose ``tool_calls`` and a call of the function ``tool_choice`` names ``stop``.
    Model servers differ (some end every call ``stop``, others a named one ``tool_calls``), and the miner's word
    was passed on: code that checks ``finish_reason == "tool_calls"`` (OpenAI's cookbook loop) read a chosen call
    as no call from one miner and not another."""
    scripts = {uid: Script([(0, d) for d in sse(*call_chunks("stop"))]) for uid in (1, 2)}
    named = {"type": "function", "function": {"name": "get_weather"}}
    async with api_with_miners(tmp_path, scripts) as api:
        client = openai_client(api)
        for choice, expected in (("auto", "tool_calls"), ("required", "tool_calls")):
            assert await finish_reasons(client, stream, n, tool_choice=choice) == [expected] * n
    scripts = {uid: Script([(0, d) for d in sse(*call_chunks("tool_calls"))]) for uid in (1, 2)}
    async with api_with_miners(tmp_path, scripts) as api:
        client = openai_client(api)
        assert await finish_reasons(client, stream, n, tool_choice=named) == ["stop"] * n
        assert await finish_reasons(client, stream, n, tool_choice="auto") == ["tool_calls"] * n


async def finish_reasons(client: openai.AsyncOpenAI, stream: bool, n: int, **kw: object) -> list[str]:
    """Each choice's ``finish_reason``, and that its call came whole."""
    asked = {"model": "default", "messages": MSG, "tools": WEATHER, "n": n, **kw}
    if not stream:
        out = await client.chat.completions.create(**asked)
        assert all(c.message.tool_calls[0].function.arguments == '{"city": "Paris"}' for c in out.choices)
        return [c.finish_reason for c in out.choices]
    chunks = [c async for c in await client.chat.completions.create(**asked, stream=True)]
    ended = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason}
    return [ended[i] for i in range(n)]
