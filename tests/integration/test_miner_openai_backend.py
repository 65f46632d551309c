"""The openai backend: a miner in front of an OpenAI-compatible server, through the API."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import aiohttp

from api.app import create_api_app
from neurons.miner.app import create_miner_app
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from shared.signing import Authorizer, RequestVerifier
from tests.fake_upstream import MODEL, create_fake_upstream
from tests.helpers import build_api_context, keypair, serve_app, snapshot

VALIDATOR, MINER = keypair("//Validator"), keypair("//Miner1")


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, received: list):
    async with contextlib.AsyncExitStack() as st:
        upstream = await st.enter_async_context(serve_app(create_fake_upstream(received)))
        backend = OpenAICompatibleBackend(upstream + "/v1")
        await backend.start()
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        miner = await st.enter_async_context(serve_app(create_miner_app(backend, verifier)))
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR.ss58_address,
                                                         {1: (MINER.ss58_address, miner[7:])}), VALIDATOR)
        st.push_async_callback(ctx.client.session.close)
        key, _ = await ctx.store.create_key(100)
        api = await st.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
        yield api, key


async def test_sampling_fields_reach_upstream_and_subnet_fields_do_not(tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
                "temperature": 0.3, "top_p": 0.9, "max_tokens": 12, "stop": ["\n\n"], "seed": 5,
                "response_format": {"type": "json_object"}, "my_vendor_flag": True,
                "task": "InferenceTask", "sampling_parameters": {"top_k": 7}}
        async with s.post(api + "/v1/chat/completions", json=body, headers={"x-api-key": key}) as r:
            out = await r.json()
            assert r.status == 200, out
    assert out["model"] == MODEL
    # a non-streaming caller gets the upstream's own JSON completion through the miner, usage included
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    sent = received[-1]
    for field, value in [("temperature", 0.3), ("top_p", 0.9), ("max_tokens", 12), ("stop", ["\n\n"]),
                         ("seed", 5), ("response_format", {"type": "json_object"}), ("my_vendor_flag", True),
                         ("top_k", 7), ("model", MODEL)]:
        assert sent[field] == value, field
    assert "task" not in sent and "sampling_parameters" not in sent


async def test_tool_calls_pass_through(tmp_path: Path) -> None:
    received: list = []
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        for stream in (False, True):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "find x"}], "tools": tools,
                    "tool_choice": "auto", "stream": stream}
            async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
                assert r.status == 200
                text = await r.text()
            if stream:
                datas = [json.loads(line[6:]) for line in text.splitlines()
                         if line.startswith("data: ") and line != "data: [DONE]"]
                call = datas[0]["choices"][0]["delta"]["tool_calls"][0]
            else:
                msg = json.loads(text)["choices"][0]
                assert msg["finish_reason"] == "tool_calls"
                call = msg["message"]["tool_calls"][0]
            assert call["function"]["name"] == "search" and call["function"]["arguments"] == '{"q": "x"}'
    assert received[-1]["tools"] == tools


async def test_a_request_the_model_server_refuses_is_the_callers_400_not_a_miner_failure(tmp_path: Path) -> None:
    """The upstream's 400 (too many tokens) reaches the caller as a 400 with the upstream's words, which
    clients do not retry; the upstream's own failure (503) stays the miner's 502."""
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        for stream in (False, True):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000,
                    "stream": stream}
            async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
                out = await r.json()
                assert r.status == 400, out
            assert out["error"]["code"] == "model_server_rejected"
            assert out["error"]["type"] == "invalid_request_error"
            assert "uid 1: HTTP 400: upstream HTTP 400: This model's maximum context length is 4096 tokens" in \
                out["error"]["message"], "the upstream's words, not its JSON wrapped in the miner's"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "overloaded"}]}
        async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
            out = await r.json()
            assert r.status == 502 and out["error"]["code"] == "no_valid_answer", out
