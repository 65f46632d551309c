"""The openai backend: a miner in front of an OpenAI-compatible server, through the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from api.app import create_api_app
from neurons.miner.app import create_miner_app
from neurons.miner.backends.base import BackendError
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.miner.media_urls import MediaFetcher
from neurons.validator.scoring import rebuild_answer
from shared.errors import MODEL_SERVER_REJECTED
from shared.metagraph import Neuron
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from shared.sse import DONE, SSEParser
from tests.fake_upstream import CONTEXT_ERROR, MODEL, STREAM_REFUSALS, STREAM_STYLES, create_fake_upstream
from tests.helpers import build_api_context, keypair, log_lines, serve_app, snapshot, wait_until

VALIDATOR, MINER = keypair("//Validator"), keypair("//Miner1")


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, received: list, *, payloads: list | None = None, media: MediaFetcher | None = None,
                server: web.Application | None = None, **upstream: Any):
    """API -> miner (openai backend) -> fake upstream (``create_fake_upstream``'s options, or ``server``), over HTTP;
    ``payloads`` collects the scoring payloads the API hands the validator; ``media``: the miner's media fetcher."""
    async with contextlib.AsyncExitStack() as st:
        model_server = server or create_fake_upstream(received, **upstream)
        upstream_url = await st.enter_async_context(serve_app(model_server))
        backend = OpenAICompatibleBackend(upstream_url + "/v1", media=media)
        await backend.start()
        st.push_async_callback(backend.close)
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        miner = await st.enter_async_context(serve_app(create_miner_app(backend, verifier)))
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR.ss58_address,
                                                         {1: (MINER.ss58_address, miner[7:])}), VALIDATOR)
        st.push_async_callback(ctx.client.session.close)
        if payloads is not None:
            ctx.payload_sinks.append(payloads.append)
        key, _ = await ctx.store.create_key(100)
        api = await st.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
        yield api, key


async def post_chat(s: aiohttp.ClientSession, api: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
        return r.status, await r.json()


async def answered(api: str, key: str, body: dict[str, Any], payloads: list) -> bytes:
    """A chat request's 200 body, once the API has handed its scoring payload over."""
    async with aiohttp.ClientSession() as s, s.post(api + "/v1/chat/completions", json=body,
                                                    headers={"api-key": key}) as r:
        raw = await r.read()
        assert r.status == 200, raw
    await wait_until(lambda: bool(payloads), 2.0)
    return raw


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
                         ("seed", 5), ("response_format", {"type": "json_object"}), ("top_k", 7), ("model", MODEL)]:
        assert sent[field] == value, field
    # the subnet's own fields stay with the miner, and so does a field that is not OpenAI's (upstream_fields)
    assert "task" not in sent and "sampling_parameters" not in sent and "my_vendor_flag" not in sent


@pytest.mark.parametrize(("do_sample", "temperature"), [(True, 0.7), (False, 0.0)])
async def test_the_subnet_docs_example_samples_as_do_sample_says(tmp_path: Path, do_sample: bool,
                                                                 temperature: float) -> None:
    """The original API's doc example (AsyncOpenAI, its api-key header, extra_body with ``sampling_parameters``)
    as written, and with ``"do_sample": False``: greedy decoding, temperature 0 at the model server whatever
    temperature is given (Hugging Face's flag, whose ``generate`` then ignores temperature). It was dropped at
    the miner, and the "greedy" answer sampled at the caller's 0.7."""
    import openai

    received: list = []
    async with stack(tmp_path, received) as (api, key):
        def make_header(api_key: str) -> dict[str, str]:
            return {"api-key": f"{api_key}", "Content-Type": "application/json"}

        client = openai.AsyncOpenAI(base_url=f"{api}/v1", max_retries=0,
                                    timeout=openai.Timeout(30, connect=10, read=20),
                                    http_client=openai.DefaultAsyncHttpxClient(headers=make_header(key)), api_key=key)
        result = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": """How are you?"""}], stream=True, temperature=0.7,
            extra_body={"task": "InferenceTask",
                        "sampling_parameters": {"mixture": False, "max_new_tokens": 256, "do_sample": do_sample}},
            seed=42, extra_headers=make_header(key))
        text = "".join([c.choices[0].delta.content or "" async for c in result if c.choices])
        await client.close()
    assert text.strip() == "echo: How are you?"
    sent = received[-1]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (temperature, 256, 42)


# A caller's fields that a model server takes and OpenAI does not have (vLLM's), or that act on the miner more than
# on the answer: none reaches the model server, through the API or sent to the miner by any validator.
SERVER_ONLY = {"chat_template": "{{ 7*7 }}", "chat_template_kwargs": {"enable_thinking": False},
               "guided_regex": "(a|aa)*b", "guided_json": {"type": "object"}, "structured_outputs": {"regex": "a+"},
               "best_of": 64, "use_beam_search": True, "ignore_eos": True, "min_tokens": 4000,
               "prompt_logprobs": 20, "echo": True, "priority": -100, "kv_transfer_params": {"do_remote_decode": True},
               "service_tier": "priority", "store": True, "prediction": {"type": "content", "content": "x"}}
OPENAI_KEPT = {"reasoning_effort": "low", "verbosity": "low", "user": "u-1", "presence_penalty": 0.5,
               "frequency_penalty": 0.25, "logit_bias": {"50256": -100}, "prompt_cache_key": "k",
               "safety_identifier": "s", "min_p": 0.05, "repetition_penalty": 1.1}


async def test_only_openais_fields_and_the_shared_sampling_extras_reach_the_model_server(tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        body = {"messages": [{"role": "user", "content": "hello"}], **SERVER_ONLY, **OPENAI_KEPT}
        for stream in (False, True):
            async with s.post(api + "/v1/chat/completions", json=body | {"stream": stream},
                              headers={"api-key": key}) as r:
                assert r.status == 200, await r.text()
    assert len(received) == 2
    for sent in received:
        assert not set(SERVER_ONLY) & set(sent), sorted(set(SERVER_ONLY) & set(sent))
        assert {k: sent[k] for k in OPENAI_KEPT} == OPENAI_KEPT


def test_a_validators_own_n_and_fields_named_by_the_operator() -> None:
    """A validator may send a miner anything: ``n`` (one answer is asked of each miner) does not reach the model
    server; a field the operator names in UPSTREAM_EXTRA_FIELDS does, and no other."""
    body = {"messages": [{"role": "user", "content": "hi"}], "model": MODEL, "n": 50, **SERVER_ONLY}
    plain = OpenAICompatibleBackend("http://127.0.0.1:9/v1").upstream_body(body, stream=False)
    assert set(plain) == {"messages", "model", "stream"}
    named = OpenAICompatibleBackend("http://127.0.0.1:9/v1", extra_fields=["chat_template_kwargs", " "])
    assert set(named.upstream_body(body, stream=False)) == {"messages", "model", "stream", "chat_template_kwargs"}


async def test_the_upstreams_system_fingerprint_reaches_the_caller(tmp_path: Path) -> None:
    """The miner relays the model server's JSON as it came, and the API's object of it kept no fingerprint."""
    async with stack(tmp_path, []) as (api, key), aiohttp.ClientSession() as s:
        status, out = await post_chat(s, api, key, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and out["system_fingerprint"] == "fp_fake", out


@pytest.mark.parametrize("quirk", ["cached-prompt-zero", "no-usage"])
async def test_a_count_the_model_server_gives_as_0_or_not_at_all_is_estimated_and_charged(
        tmp_path: Path, quirk: str) -> None:
    """Ollama answered ``prompt_tokens: 0`` for a prompt it had cached (ollama/ollama#5370): the miner relayed it, and
    the API showed and charged the key 0 prompt tokens (its daily token limit never reached by such requests). The
    miner estimates such a count as the API does (~4 characters a token: "hi there" is 2), and says so."""
    async with stack(tmp_path, [], quirks=frozenset({quirk})) as (api, key), aiohttp.ClientSession() as s:
        status, out = await post_chat(s, api, key, {"messages": [{"role": "user", "content": "hi there"}]})
    assert status == 200, out
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6, "estimated": True}


@pytest.mark.parametrize("style", ["openai", "llama.cpp"])
async def test_a_streamed_prompt_count_of_0_is_estimated_and_charged(tmp_path: Path, style: str) -> None:
    """The same 0 in a stream's usage chunk (the miner relays a stream unparsed): its prompt count is estimated, the
    total with it, wherever the usage chunk comes."""
    body = {"messages": [{"role": "user", "content": "hi there"}], "stream": True,
            "stream_options": {"include_usage": True}}
    async with stack(tmp_path, [], quirks=frozenset({"cached-prompt-zero", "include-usage"}), stream_style=style) \
            as (api, key), aiohttp.ClientSession() as s:
        async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
            raw = await r.read()
    assert r.status == 200, raw
    parser = SSEParser()
    usages = [json.loads(e)["usage"] for e in parser.feed(raw) + parser.close() if e != DONE and '"usage"' in e]
    assert usages[-1] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6, "estimated": True}


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


async def test_tool_call_arguments_a_server_answers_as_an_object_reach_the_caller_as_json_text(
        tmp_path: Path) -> None:
    """TGI answers a tool call's arguments as the object itself: the API could not fold it into a call, so
    an honest call was the miner's invalid chunk (no answer, a 0), and callers' json.loads failed."""
    received: list = []
    payloads: list = []
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    async with stack(tmp_path, received, payloads=payloads, object_arguments=True) as (api, key):
        raw = await answered(api, key, {"model": MODEL, "messages": [{"role": "user", "content": "find x"}],
                                        "tools": tools}, payloads)
    out = json.loads(raw)
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "search" and json.loads(call["function"]["arguments"]) == {"q": "x"}
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert payloads[0]["errors"] == {} and payloads[0]["winner"] == 1


async def test_a_request_the_model_server_refuses_is_the_callers_400_not_a_miner_failure(tmp_path: Path) -> None:
    """The upstream's 400 (too many tokens) reaches the caller as a 400 with the upstream's words, which
    clients do not retry; the upstream's own failure (503) stays the miner's 502. (Another refusal keeps
    ``model_server_rejected``: test_an_upstream_that_refuses_top_k...)"""
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        for stream in (False, True):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000,
                    "stream": stream}
            status, out = await post_chat(s, api, key, body)
            assert status == 400, out
            assert out["error"]["code"] == "context_length_exceeded"  # OpenAI's code for it (agents trim on it)
            assert out["error"]["type"] == "invalid_request_error"
            assert "uid 1: HTTP 400: upstream HTTP 400: This model's maximum context length is 4096 tokens" in \
                out["error"]["message"], "the upstream's words, not its JSON wrapped in the miner's"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "overloaded"}]}
        status, out = await post_chat(s, api, key, body)
        assert status == 502 and out["error"]["code"] == "no_valid_answer", out


@pytest.mark.parametrize("dialect", sorted(STREAM_REFUSALS))
async def test_a_stream_the_model_server_opens_with_a_refusal_is_the_callers_400(tmp_path: Path, dialect: str) -> None:
    """llama.cpp (until October 2025) and TGI refuse a streamed prompt too long for the model after a 200,
    with an error event first. Relayed, it was the miner's failure (no finish_reason), and any key's
    too-long prompt was a 0 for such miners; the miner now answers the status the event carries, as it
    answers a refusal that comes before the stream."""
    received: list = []
    async with stack(tmp_path, received, stream_refusal=dialect) as (api, key), aiohttp.ClientSession() as s:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000,
                "stream": True}
        status, out = await post_chat(s, api, key, body)
        assert status == 400, out
        assert out["error"]["code"] == "context_length_exceeded"
        status, words = (422, "Input validation error") if dialect == "tgi" else (400, CONTEXT_ERROR)  # TGI's 422
        assert f"uid 1: HTTP {status}: upstream stream opened with an error ({status}): {words}" in \
            out["error"]["message"], "the upstream's words, not its event"
        body["max_tokens"] = 12  # the same server's answers stream as before
        async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
            text = await r.text()
            assert r.status == 200, text
        answer = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                         for line in text.splitlines() if line.startswith("data: {"))
        assert answer.strip() == "echo: hi"


@pytest.mark.parametrize("style", STREAM_STYLES)
async def test_real_servers_stream_framings_are_a_whole_answer_to_the_race_and_the_validator(
        tmp_path: Path, style: str) -> None:
    """CRLF and ``: ping`` comments (sse-starlette), ``data:`` without a space (TGI), a role-only first
    delta with null content, the finish_reason on the last content chunk and a ``choices: []`` usage chunk
    with ``timings`` (llama.cpp), no ``[DONE]``: each is an honest answer that wins, reaches the caller
    whole, and is rebuilt by the validator without an error."""
    received: list = []
    payloads: list = []
    async with stack(tmp_path, received, payloads=payloads, stream_style=style) as (api, key):
        raw = await answered(api, key, {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}],
                                        "stream": True}, payloads)
    parser = SSEParser()
    chunks = [json.loads(e) for e in parser.feed(raw) + parser.close() if e != DONE]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices).strip() == "echo: hi there"
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    payload = payloads[0]
    assert payload["winner"] == 1 and payload["errors"] == {}
    rebuilt = rebuild_answer(payload["chunks"]["1"], payload["timings"]["1"], None)
    assert rebuilt.error is None and rebuilt.text.strip() == "echo: hi there"


def test_a_stream_that_opens_with_a_server_error_is_the_miners_502_and_an_answer_is_no_error() -> None:
    """Only a refusal of the request (400/413/422) is the caller's: the upstream's own failure in its
    first event stays the miner's 502; an answer's first chunk, a keep-alive comment first, is no error."""
    from neurons.miner.backends.openai_compatible import first_event, opening_error

    def error_of(head: bytes) -> BackendError | None:
        event = first_event(head, ended=True)
        return opening_error(event) if event else None

    loading = error_of(b'error: {"code":503,"message":"Loading model","type":"unavailable_error"}\n\n')
    assert loading is not None and loading.status == 502 and loading.code != MODEL_SERVER_REJECTED
    overloaded = error_of(b'data:{"error":"Model is overloaded","error_type":"overloaded"}\n\n')
    assert overloaded is not None and overloaded.status == 502
    vllm = error_of(b'data: {"object":"error","message":"too long","type":"BadRequestError","code":400}\n\n')
    assert vllm is not None and (vllm.status, vllm.code) == (400, MODEL_SERVER_REJECTED)
    chunk = b'data: {"id":"x","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n'
    assert error_of(b": ping\r\n\r\n" + chunk) is None
    assert first_event(b": ping\n\n" + chunk[:-1]) is None, "an event not closed yet is not judged"
    assert error_of(b"data: [DONE]\n\n") is None


async def test_an_upstream_that_refuses_top_k_is_asked_again_without_it_and_never_sent_it_again(
        tmp_path: Path) -> None:
    """The validator's tasks carry ``top_k``, which OpenAI's hosted API refuses (400): every synthetic
    task would fail on such a miner. The refusal names the field: the miner asks again without it, and
    remembers."""
    received: list = []
    async with stack(tmp_path, received, refuses=frozenset({"top_k"})) as (api, key), aiohttp.ClientSession() as s:
        for stream in (False, True, False):
            body = {"messages": [{"role": "user", "content": "hi"}], "stream": stream,
                    "sampling_parameters": {"top_k": 7, "temperature": 0.5}}
            async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
                text = await r.text()
                assert r.status == 200, text
            if stream:
                answer = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                                 for line in text.splitlines() if line.startswith("data: {"))
            else:
                answer = json.loads(text)["choices"][0]["message"]["content"]
            assert answer.strip() == "echo: hi"
        # a required field the upstream refuses is still the caller's 400 (nothing optional to drop)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}
        async with s.post(api + "/v1/chat/completions", json=body, headers={"api-key": key}) as r:
            assert r.status == 400
    assert ["top_k" in b for b in received[:3]] == [True, False, False], "asked once with it, then never"
    assert all(b.get("temperature") == 0.5 for b in received[:3]), "the rest of the sampling still goes"


def test_the_subnets_sampling_block_reaches_the_upstream_as_its_own_fields() -> None:
    """Synthetic tasks carry their sampling only in ``sampling_parameters``: the upstream must sample as
    the validator's reference model does (it got them at the top level; the upstream got none)."""
    backend = OpenAICompatibleBackend("http://127.0.0.1:9/v1")
    body = {"messages": [], "seed": 7, "task": "InferenceTask", "temperature": 0.2,
            "sampling_parameters": {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "max_new_tokens": 64}}
    sent = backend.upstream_body(body, stream=True)
    assert (sent["temperature"], sent["top_p"], sent["top_k"], sent["max_tokens"]) == (0.2, 0.95, 40, 64), \
        "the request's own fields first, then the block's"
    assert "sampling_parameters" not in sent and "task" not in sent


async def test_models_come_from_the_upstream_even_when_it_comes_up_late() -> None:
    """An upstream still loading at the miner's start has no models to advertise (the deterministic model's
    name was advertised, and sent upstream for "default"); once it is up, its list is read."""
    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "late-model"}]}))
    async with serve_app(up) as url:
        port = int(url.rsplit(":", 1)[1])
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", models_refresh=0.05, down_probe=0.05)
    await backend.start()  # nothing listens on the port now
    try:
        assert backend.models() == []
        async with serve_app(up, port=port):
            await wait_until(lambda: bool(backend.models()), 2.0)
            assert backend.models() == ["late-model"]
    finally:
        await backend.close()


@pytest.mark.parametrize("ending", [b"", b"\n", b'\n\ndata: {"id":"u","obj'],
                         ids=["no-newline", "one-newline", "cut-mid-event"])
async def test_a_stream_the_upstream_ends_mid_line_keeps_its_events_apart(tmp_path: Path, ending: bytes) -> None:
    """The miner's own ending (``[DONE]``, or an error event) must not run on into the upstream's last line."""
    def event(text: str, finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "u", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                       "choices": [{"index": 0, "delta": {"content": text},
                                                    "finish_reason": finish}]}).encode()

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event("a") + b"\n\n" + event("b", "stop") + ending)
        await response.write_eof()
        return response

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions", chat)
    async with contextlib.AsyncExitStack() as st:
        upstream = await st.enter_async_context(serve_app(up))
        backend = OpenAICompatibleBackend(upstream + "/v1")
        await backend.start()
        st.push_async_callback(backend.close)
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        miner = await st.enter_async_context(serve_app(create_miner_app(backend, verifier)))
        client = MinerClient(make_session(), Signer(VALIDATOR))
        st.push_async_callback(client.session.close)
        neuron = Neuron(uid=1, hotkey=MINER.ss58_address, axon=miner.removeprefix("http://"))
        deadline = asyncio.get_running_loop().time() + 5
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
        events = [e for batch in [b async for b in client.stream_chat_batches(neuron, body, deadline)] for e in batch]
    if ending.endswith(b"obj"):  # the cut event arrives as the garbage it is (the API fails the miner), apart
        assert events[-1] == '{"id":"u","obj' and len(events) == 3
        events = events[:2]
    texts = [json.loads(e) if isinstance(e, str) else e for e in events]
    assert [c["choices"][0]["delta"]["content"] for c in texts] == ["a", "b"]
    assert texts[-1]["choices"][0]["finish_reason"] == "stop"


async def _listing(ids: list[str], **kwargs: object) -> list[str]:
    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": i} for i in ids]}))
    async with serve_app(up) as url:
        backend = OpenAICompatibleBackend(url + "/v1", **kwargs)  # type: ignore[arg-type]
        await backend.start()
        try:
            return backend.models()
        finally:
            await backend.close()


async def test_only_chat_models_are_advertised_and_upstream_models_chooses_among_them() -> None:
    """OpenAI's /models lists embeddings, speech and image models beside its chat models (Ollama's, the
    embedding models pulled): advertised, they drew requests they fail, and "default" went to the first."""
    listed = ["text-embedding-3-small", "gpt-4o-mini", "whisper-1", "tts-1", "dall-e-3", "nomic-embed-text",
              "omni-moderation-latest", "llama3.1:8b"]
    assert await _listing(listed) == ["gpt-4o-mini", "llama3.1:8b"]
    # UPSTREAM_MODELS: the operator's choice and order (the first answers "default"); unlisted ones left out
    assert await _listing(listed, serve_models=["llama3.1:8b", "gpt-4o-mini", "not-there"]) == \
        ["llama3.1:8b", "gpt-4o-mini"]


async def test_a_chat_model_serves_arithmetic_and_nothing_is_served_before_the_upstream_lists_a_model() -> None:
    """Arithmetic was not advertised: the validator recorded every arithmetic job (15% of the weight) as
    "unavailable for this task", a 0, though any chat model answers it."""
    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    async with serve_app(up) as url:
        port = int(url.rsplit(":", 1)[1])
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{port}/v1", models_refresh=0.05, down_probe=0.05)
    await backend.start()  # nothing listens yet: a model server still loading
    try:
        assert backend.tasks() == [], "no model, no task: advertised, every job would fail"
        async with serve_app(up, port=port):
            await wait_until(lambda: bool(backend.models()), 2.0)
            assert set(backend.tasks()) == {"InferenceTask", "QuestionAnsweringTask", "ArithmeticTask"}
    finally:
        await backend.close()


async def test_credentials_in_upstream_url_never_reach_the_log() -> None:
    """http://user:token@host/v1 was logged whole, every minute the upstream was unreachable."""
    from loguru import logger

    from tests.ports import free_port

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    backend = OpenAICompatibleBackend(f"http://miner:s3cret-token@127.0.0.1:{free_port()}/v1")
    try:
        await backend.start()  # nothing listens: the failure is logged
    finally:
        await backend.close()
        logger.remove(sink)
    assert any("could not list upstream models" in line for line in lines)
    assert not any("s3cret-token" in line for line in lines), lines


async def test_an_upstream_200_that_is_not_an_answer_is_the_miners_502() -> None:
    """A proxy's HTML page with status 200 was relayed as an answer (streamed: the page, then our [DONE])
    and counted a success."""

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions",
                       lambda _r: web.Response(text="<html>Bad gateway, try later</html>", content_type="text/html"))
    async with serve_app(up) as url:
        backend = OpenAICompatibleBackend(url + "/v1")
        await backend.start()
        try:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(BackendError, match="text/html") as waited:
                await backend.complete_raw(body)
            assert waited.value.status == 502
            with pytest.raises(BackendError, match="text/html"):
                async for _ in backend.stream_raw(body):
                    pass
        finally:
            await backend.close()


async def test_an_ollama_with_no_model_pulled_yet_is_no_crash_and_its_first_model_is_served_once_pulled() -> None:
    """Ollama lists no model as ``"data": null``: iterating it raised TypeError, which stopped the miner
    at start (and, had it come later, the refresher for good: the model pulled next was never served)."""
    listed: list[str] = []
    async with serve_app(create_fake_upstream([], models=listed)) as url:
        backend = OpenAICompatibleBackend(url + "/v1", models_refresh=0.05, down_probe=0.05)
        await backend.start()
        try:
            assert backend.models() == [] and backend.tasks() == []
            verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
            async with serve_app(create_miner_app(backend, verifier)) as miner, aiohttp.ClientSession() as s:
                listed.append(MODEL)  # the operator pulls a model
                await wait_until(lambda: bool(backend.models()), 2.0)
                async with s.get(miner + "/health") as r:
                    assert (await r.json())["models"] == [MODEL]
            assert "InferenceTask" in backend.tasks()
        finally:
            await backend.close()


LONG_TALK = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 8} for i in range(8)]


async def test_an_input_over_the_context_window_is_openais_context_length_exceeded(tmp_path: Path) -> None:
    """The code agent frameworks act on: LangChain raises its ContextOverflowError (its agents then trim or
    summarize), Pydantic AI its ModelContextWindowExceededError; the SDK's BadRequestError carries it."""
    import openai
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI
    from langchain_openai.chat_models.base import OpenAIContextOverflowError
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelContextWindowExceededError
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    received: list = []
    async with stack(tmp_path, received, context_tokens=40) as (api, key):
        client = openai.AsyncOpenAI(base_url=api + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            await client.chat.completions.create(model=MODEL, messages=LONG_TALK)  # type: ignore[arg-type]
        assert (e.value.code, e.value.param) == ("context_length_exceeded", "messages")
        assert "maximum context length is 40 tokens" in e.value.message
        llm = ChatOpenAI(model=MODEL, base_url=api + "/v1", api_key=key, max_retries=0)
        with pytest.raises(OpenAIContextOverflowError):
            await llm.ainvoke([HumanMessage(m["content"]) for m in LONG_TALK])
        agent = Agent(OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=api + "/v1", api_key=key)))
        with pytest.raises(ModelContextWindowExceededError):
            await agent.run(" ".join(m["content"] for m in LONG_TALK))
        with pytest.raises(openai.BadRequestError) as e:  # the legacy API names its own field
            await client.completions.create(model=MODEL, prompt=" ".join(m["content"] for m in LONG_TALK))
        assert (e.value.code, e.value.param) == ("context_length_exceeded", "prompt")
        short = await client.chat.completions.create(model=MODEL, messages=LONG_TALK[-1:])  # type: ignore[arg-type]
        assert short.choices[0].message.content == "echo: " + LONG_TALK[-1]["content"]


async def test_truncation_auto_drops_the_oldest_turns_until_the_miners_model_takes_it(tmp_path: Path) -> None:
    """OpenAI's ``truncation: "auto"``: the conversation is cut from its beginning (the instructions stay)
    until it fits; "disabled" (the default) is the 400. What is stored is the whole conversation."""
    import openai

    received: list = []
    async with stack(tmp_path, received, context_tokens=40) as (api, key):
        client = openai.AsyncOpenAI(base_url=api + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model=MODEL, input=LONG_TALK, instructions="Be brief.")  # type: ignore[arg-type]
        assert (e.value.code, e.value.param) == ("context_length_exceeded", "input")
        for stream in (False, True):
            received.clear()
            if stream:
                async with client.responses.stream(model=MODEL, input=LONG_TALK, instructions="Be brief.",  # type: ignore[arg-type]
                                                   truncation="auto") as events:
                    done = await events.get_final_response()
            else:
                done = await client.responses.create(model=MODEL, input=LONG_TALK, instructions="Be brief.",  # type: ignore[arg-type]
                                                     truncation="auto")
            assert done.status == "completed" and done.truncation == "auto"
            assert done.output_text.strip() == ("echo: " + LONG_TALK[-1]["content"]).strip()
            last = received[-1]["messages"]  # what the model took: the instructions, then the latest turns
            assert last[0] == {"role": "system", "content": "Be brief."} and last[-1]["content"] == LONG_TALK[-1]["content"]
            assert [m["content"] for m in last[1:]] == [m["content"] for m in LONG_TALK[-(len(last) - 1):]]
            # refused whole, then asked once more with as much as the refusal's numbers said would fit
            assert len(received) == 2 and 1 < len(last) - 1 < len(LONG_TALK)
            listed = [item async for item in client.responses.input_items.list(done.id)]
            assert len(listed) == len(LONG_TALK)  # stored whole: the next turn is cut again as it needs


async def test_truncation_auto_keeps_the_call_a_long_tool_result_answers(tmp_path: Path) -> None:
    """An agent's turn ending with a long tool result (a fetched page): cut to fit, the result alone was
    left, without the call it answers, and the request a 400 about ``messages`` the caller never sent
    ("must be a response to a preceding message") instead of an answer."""
    import openai

    tool = {"type": "function", "name": "fetch", "parameters": {"type": "object", "properties": {}}}
    turn = [{"type": "function_call", "call_id": "call_9", "name": "fetch", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_9", "output": "page:" + "x" * 800}]  # one word
    received: list = []
    async with stack(tmp_path, received, context_tokens=40) as (api, key):
        client = openai.AsyncOpenAI(base_url=api + "/v1", api_key=key, max_retries=0)
        done = await client.responses.create(model=MODEL, input=LONG_TALK + turn, tools=[tool],  # type: ignore[arg-type]
                                             truncation="auto")
    assert done.status == "completed"
    last = received[-1]["messages"]  # what the model took: the call, then its result
    assert [m["role"] for m in last] == ["assistant", "tool"] and last[0]["tool_calls"][0]["id"] == "call_9"


def access_lines(lines: list[str], rid: str) -> list[str]:
    """The API's access lines of request ``rid`` (the request log hands loguru several in one record)."""
    return [line.split(" | api | ", 1)[1] for record in lines for line in record.splitlines()
            if " | api | " in line and f" rid={rid} " in line]


async def races_logged(lines: list[str], rid: str, kind: str) -> list[str]:
    """The two race lines of request ``rid`` (they start with ``kind``), once both are written."""
    def races() -> list[str]:
        return [line for line in access_lines(lines, rid) if line.startswith(kind)]

    await wait_until(lambda: len(races()) >= 2, 5.0)
    assert len(races()) == 2, races()
    return races()


async def test_each_attempt_of_a_truncated_background_response_has_its_access_line(tmp_path: Path) -> None:
    """A foreground response cut and asked again (``truncation: "auto"``) logs each race: the refused one's
    line names the miner that refused (``failed=1:refused``). A background one logged only its last race, so
    an operator could not see the attempts that failed nor why; each has its line now, with the request's id. The
    race asked with the conversation cut says so (``truncated=1``): nothing told it from the first."""
    import openai

    lines, handler = log_lines("INFO")
    try:
        async with stack(tmp_path, [], context_tokens=40) as (api, key):
            client = openai.AsyncOpenAI(base_url=api + "/v1", api_key=key, max_retries=0)
            for background, stream in ((False, False), (True, False), (True, True)):
                rid = f"truncated-{background}-{stream}"
                asked = dict(model=MODEL, input=LONG_TALK, instructions="Be brief.", truncation="auto",
                             extra_headers={"x-request-id": rid})
                if stream:
                    async with client.responses.stream(background=background, **asked) as events:  # type: ignore[arg-type]
                        done = await events.get_final_response()
                else:
                    done = await client.responses.create(background=background, **asked)  # type: ignore[arg-type, call-overload]
                    while done.status in ("queued", "in_progress"):
                        await asyncio.sleep(0.05)
                        done = await client.responses.retrieve(done.id)
                assert done.status == "completed", done
                kind = "responses.background " if background else "responses "
                races = await races_logged(lines, rid, kind)
                assert " uids=[1] winner=None " in races[0] and " status=error " in races[0], races
                assert races[0].endswith(" failed=1:refused"), races
                assert " winner=1 " in races[1] and " status=ok truncated=1 " in races[1], races
                assert " truncated=" not in races[0], "the first race was asked with the conversation as sent"
    finally:
        logger.remove(handler)


async def test_an_upstream_url_that_does_not_parse_fails_each_request_not_the_start() -> None:
    """The chat URL is parsed once, at construction: one that does not parse (a port out of range) is still each
    request's 502 saying why, as when aiohttp parsed it at every request, not a backend that cannot be made."""
    backend = OpenAICompatibleBackend("http://127.0.0.1:99999/v1", serve_models=[MODEL])
    await backend.start()
    try:
        with pytest.raises(BackendError) as refused:
            await backend.complete_raw({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert refused.value.status == 502 and "upstream failed" in str(refused.value)
    finally:
        await backend.close()
