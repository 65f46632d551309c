"""What a miner sends that is valid SSE or JSON but not what the caller's SDK reads: it must never
reach the caller broken, turn into a 500, or hang a request past its deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from api.app import create_api_app
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    build_api_context,
    chunk,
    keypair,
    post,
    serve_app,
    snapshot,
    sse,
)
from tests.helpers import api_with_miners as with_miners

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]


def sdk(url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def raw_chunk(index: int = 0, content: str | None = None, finish: str | None = None, **extra) -> str:
    choice = {"index": index, "delta": {"content": content} if content else {}, "finish_reason": finish, **extra}
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]})


async def test_each_miner_is_asked_for_one_answer_and_a_second_choice_fails_it(tmp_path: Path) -> None:
    """``n`` is the API's (a race per choice): miners are not asked for n answers each, and a miner that
    sends a second choice anyway (as vLLM streams n = 2) fails instead of mixing it into the first."""
    two = Script([(0, d) for d in sse(raw_chunk(0, "AAA "), raw_chunk(1, "BBB "), raw_chunk(0, "aaa"),
                                      raw_chunk(1, "bbb"), raw_chunk(0, finish="stop"), raw_chunk(1, finish="stop"))])
    async with with_miners(tmp_path, {1: two}, honest={2}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "n": 2, "seed": 3})
        alone = [json.loads((await post(api, {"messages": MESSAGES, "seed": 3 + i, "uids": [2]}))[2])
                 for i in range(2)]
    assert status == 200, text
    assert "n" not in two.bodies[0] and len(two.bodies) == 2
    got = [c["message"]["content"] for c in json.loads(text)["choices"]]
    assert got == [a["choices"][0]["message"]["content"] for a in alone], "each choice one miner's whole answer"
    assert not any("BBB" in g or "AAA" in g for g in got)


async def test_an_event_over_several_data_lines_reaches_the_sdk_whole(tmp_path: Path) -> None:
    pretty = json.dumps(json.loads(raw_chunk(0, "Hello")), indent=1)
    event = "".join(f"data: {line}\n" for line in pretty.split("\n")).encode() + b"\n"
    script = Script([(0, event)] + [(0, d) for d in sse(chunk(" there", finish="stop"))])
    async with with_miners(tmp_path, {1: script}) as api:
        stream = await sdk(api.url, api.key).chat.completions.create(model="default", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello there"


def _json_miner() -> web.Application:
    """A miner that answers every request with one JSON completion calling a tool (a stream asked for or not)."""
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({
            "id": "u", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None,
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


@contextlib.asynccontextmanager
async def _api_with_json_miner(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve_app(_json_miner()))
        miners = {1: (keypair("//Miner1").ss58_address, url.removeprefix("http://"))}
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address, miners), VALIDATOR_KP)
        stack.push_async_callback(ctx.client.session.close)
        secret, _ = await ctx.store.create_key(1000)
        api_url = await stack.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
        yield api_url, secret


async def test_a_json_answer_to_a_stream_relays_tool_calls_the_sdk_can_merge(tmp_path: Path) -> None:
    async with _api_with_json_miner(tmp_path) as (url, key):
        async with sdk(url, key).beta.chat.completions.stream(model="default", messages=MESSAGES, tools=TOOLS) as st:
            async for _ in st:
                pass
            final = await st.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get_weather", "{}")


async def test_a_json_answer_to_a_stream_ends_with_the_usage_chunk_the_sdk_reads(tmp_path: Path) -> None:
    """The usage of a miner's JSON answer rode on its choice's chunk: a stream with ``include_usage``
    did not end with a usage chunk of no choices, the one the SDK's contract says to read it from."""
    async with _api_with_json_miner(tmp_path) as (url, key):
        stream = await sdk(url, key).chat.completions.create(model="default", messages=MESSAGES, tools=TOOLS,
                                                             stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        whole = await sdk(url, key).chat.completions.create(model="default", messages=MESSAGES, tools=TOOLS)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert [c.usage for c in chunks[:-1]] == [None] and chunks[0].choices[0].finish_reason == "tool_calls"
    assert whole.usage is not None and whole.usage.total_tokens == 7


BAD_USAGE = {"prompt_tokens": "n/a", "completion_tokens": 5, "total_tokens": 5}


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/responses", {"input": "hi"}),
    ("/v1/responses", {"input": "hi", "stream": True}),
], ids=["chat", "chat-n2", "completions", "responses", "responses-stream"])
async def test_a_miners_usage_that_is_not_token_counts_is_estimated_not_a_500(tmp_path: Path, path: str,
                                                                               body: dict) -> None:
    def script() -> Script:
        parts = sse(chunk("hello"), chunk(finish="stop", usage=BAD_USAGE))
        return Script([(0, parts[0]), (0.2, parts[1]), (0, parts[2])])

    async with with_miners(tmp_path, {1: script(), 2: script()}) as api:
        started = time.monotonic()
        status, _, text = await post(api, {**body, "timeout": 3}, path=path, timeout=10)
    assert status == 200 and time.monotonic() - started < 3, text
    assert "n/a" not in text
    if body.get("stream"):
        assert '"type":"response.completed"' in text, text[-400:]
    elif path == "/v1/responses":  # its usage shape has no "estimated"
        assert json.loads(text)["usage"]["output_tokens"] == 2
    else:
        assert json.loads(text)["usage"].get("estimated") is True


@pytest.mark.parametrize("logprobs", [
    "garbage", {"content": "garbage"}, {"content": [{"token": "hel", "logprob": -0.1, "top_logprobs": 5}]},
    {"content": None, "refusal": [5]},
], ids=["not-an-object", "content-not-a-list", "top-not-a-list", "refusal-token-not-an-object"])
@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_logprobs_of_another_shape_fail_the_miner_not_the_request(tmp_path: Path, logprobs, stream: bool) -> None:
    bad = Script([(0, d) for d in sse(raw_chunk(0, "hello", logprobs=logprobs), raw_chunk(0, finish="stop"))])
    async with with_miners(tmp_path, {1: bad}) as api:
        started = time.monotonic()
        status, _, text = await post(api, {"prompt": "hi", "logprobs": 1, "stream": stream, "timeout": 3},
                                     path="/v1/completions", timeout=10)
    assert time.monotonic() - started < 3, "no hang"
    assert status == 502 and "logprobs" in json.loads(text)["error"]["message"], text


async def test_a_bug_after_a_stream_started_ends_it_with_an_error_not_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.chat as chat

    real, calls = chat._frames, []

    def breaks_on_the_second_batch(batch):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("a bug in the relay")
        return real(batch)

    monkeypatch.setattr(chat, "_frames", breaks_on_the_second_batch)
    script = Script([(0, sse(chunk("one "), done=False)[0]), (0.3, sse(chunk("two", finish="stop"))[0]),
                     (0, b"data: [DONE]\n\n")])
    async with with_miners(tmp_path, {1: script}) as api:
        started = time.monotonic()
        async with aiohttp.ClientSession() as s, s.post(
                api.url + "/v1/chat/completions", json={"messages": MESSAGES, "stream": True},
                headers={"api-key": api.key}, timeout=aiohttp.ClientTimeout(total=10)) as r:
            with contextlib.suppress(aiohttp.ClientPayloadError):  # the connection ends with the stream
                text = (await r.read()).decode()
    assert time.monotonic() - started < 2
    assert r.status == 200 and "one " in text and "server_error" in text and "data: [DONE]" in text, text


async def test_a_caller_leaving_during_a_session_failover_stops_the_replacement(tmp_path: Path) -> None:
    scripts = {uid: Script([(20, d) for d in sse(chunk(f"from {uid}"), chunk(finish="stop"))]) for uid in (1, 2, 3)}
    async with with_miners(tmp_path, scripts) as api, aiohttp.ClientSession() as s:
        async with s.post(api.url + "/v1/sessions", json={"model": "default", "failover": True},
                          headers={"api-key": api.key}) as r:
            pinned = (await r.json())["uid"]
        scripts[pinned].status = 500
        call = asyncio.ensure_future(s.post(api.url + "/v1/chat/completions", headers={"api-key": api.key},
                                            json={"messages": MESSAGES, "timeout": 20}))
        for _ in range(50):  # until the replacement is asked
            await asyncio.sleep(0.05)
            if any(sc.active for sc in scripts.values()):
                break
        (replacement,) = [u for u, sc in scripts.items() if sc.active]
        call.cancel()
        for _ in range(20):
            await asyncio.sleep(0.05)
            if not scripts[replacement].active:
                break
        assert scripts[replacement].active == 0 and scripts[replacement].cancelled == 1, "stopped within a second"


def _refusing() -> Script:
    parts = sse(raw_chunk(0, None, None, **{}), done=False)  # a role-only opening chunk
    declined = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                           "choices": [{"index": 0, "delta": {"refusal": "I can't help with that."},
                                        "finish_reason": None}]})
    return Script([(0, d) for d in parts + sse(declined, raw_chunk(0, finish="stop"))])


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_models_refusal_reaches_the_caller_as_a_refusal(tmp_path: Path, stream: bool) -> None:
    """OpenAI's ``refusal``: it was an empty "completed" answer on both routes, and ``responses.parse``
    gave ``output_parsed=None`` with no reason."""
    async with with_miners(tmp_path, {1: _refusing()}) as api:
        client = sdk(api.url, api.key)
        if stream:
            async with client.responses.stream(model="default", input="Do something bad") as events:
                kinds = [e.type async for e in events]
                r = await events.get_final_response()
            assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
        else:
            r = await client.responses.create(model="default", input="Do something bad")
            chat = await client.chat.completions.create(model="default", messages=MESSAGES)
            assert chat.choices[0].message.refusal == "I can't help with that."
            assert chat.choices[0].message.content is None
    (message,) = r.output
    assert [(p.type, p.refusal) for p in message.content] == [("refusal", "I can't help with that.")]


async def test_a_streamed_tool_call_gets_the_same_usage_estimate_as_one_not_streamed(tmp_path: Path) -> None:
    """Without the miner's usage, a stream's usage chunk is the estimate the object gets (it counted the
    text only: a tool call was 0 tokens when streamed)."""
    call = raw_chunk(0, None, None, **{}).replace('"delta": {}', '"delta": {"tool_calls": [{"index": 0, "id": "c1", '
                                                   '"type": "function", "function": {"name": "get_weather", '
                                                   '"arguments": "{\\"city\\": \\"Paris\\"}"}}]}')
    script = Script([(0, d) for d in sse(call, raw_chunk(0, finish="tool_calls"))])
    async with with_miners(tmp_path, {1: script}) as api:
        client = sdk(api.url, api.key)
        fields = {"model": "default", "messages": MESSAGES, "tools": TOOLS}
        whole = await client.chat.completions.create(**fields)
        chunks = [c async for c in await client.chat.completions.create(
            **fields, stream=True, stream_options={"include_usage": True})]
    assert whole.usage.completion_tokens > 0
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
