"""A miner in front of each kind of model server, as operators run it: every documented quirk of a real
server (``tests.fake_upstream.QUIRKS``) answered through the API, and the answer scored by the validator's
own code against a reference model that has no quirk. An honest miner must score what the same model
behind a plain server scores: the quirk is its server's, not its fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from neurons.miner.app import create_miner_app
from neurons.miner.backends.base import BackendError
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.validator.availability import AvailabilityBook
from neurons.validator.datasets import build_datasets
from neurons.validator.payload import OrganicPayload
from neurons.validator.reference import OpenAIReference
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring import Scorer, rebuild_answer
from neurons.validator.synthetic import SyntheticConfig, run_cycle
from neurons.validator.tasks import default_registry
from neurons.validator.tasks.base import RewardContext
from shared.corpus import builtin_corpus
from shared.errors import MODEL_SERVER_REJECTED
from shared.field_refusals import FieldRefusals
from shared.metagraph import MetagraphView
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from shared.sse import DONE, SSEParser
from tests.fake_upstream import MODEL, QUIRKS, REASONER, create_fake_upstream
from tests.helpers import StaticSource, serve_app, snapshot
from tests.integration.test_miner_openai_backend import MINER, VALIDATOR, answered, stack

ASK = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]}
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
STREAMED_ONLY = {"usage-every-chunk", "include-usage", "event-lines", "tool-args-split", "tool-call-whole",
                 "slow-first-token"}
ANSWER_QUIRKS = sorted(set(QUIRKS) - {"error-200", "no-models", "openai-reasoning-model", "mistral-422"})


@contextlib.asynccontextmanager
async def scorer(tmp_path: Path) -> AsyncIterator[Scorer]:
    """The validator's Scorer, its reference model the same fake server without any quirk."""
    registry = default_registry()
    async with serve_app(create_fake_upstream([])) as url, aiohttp.ClientSession() as session:
        reference = OpenAIReference(url + "/v1", session=session, model=MODEL)
        yield Scorer(registry, RewardContext(reference, builtin_corpus()),
                     ScoreBook(registry.probabilities, alpha=0.5, path=tmp_path / "scores.json"))


async def reward_of(payload: dict[str, Any], tmp_path: Path) -> dict[int, float]:
    """The validator's rewards for an organic payload, as ``/scoring`` would queue and score it."""
    job = OrganicPayload.model_validate(payload).to_job(snapshot(VALIDATOR.ss58_address,
                                                                 {1: (MINER.ss58_address, None)}), 30.0)
    async with scorer(tmp_path) as sc:
        return await sc.rewards(job)


def streamed_chunks(raw: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    return [json.loads(e) for e in parser.feed(raw) + parser.close() if e != DONE]


def content_of(raw: bytes, stream: bool) -> str:
    if not stream:
        return json.loads(raw)["choices"][0]["message"]["content"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed_chunks(raw) if c["choices"])


@pytest.mark.parametrize(("quirk", "stream"), [
    pytest.param(q, stream, id=f"{q}-{'stream' if stream else 'json'}")
    for q in ANSWER_QUIRKS if not q.startswith("tool")
    for stream in (True, False) if stream or q not in STREAMED_ONLY  # a streaming quirk has no JSON answer
])
async def test_each_servers_quirk_is_an_honest_answer_scored_in_full(tmp_path: Path, quirk: str,
                                                                     stream: bool) -> None:
    payloads: list = []
    body = {**ASK, "stream": stream, "stream_options": {"include_usage": True}} if stream else {**ASK}
    async with stack(tmp_path, [], payloads=payloads, quirks=frozenset({quirk})) as (api, key):
        raw = await answered(api, key, body, payloads)
    assert content_of(raw, stream).strip() == "echo: hi there"
    assert payloads[0]["winner"] == 1 and payloads[0]["errors"] == {}, payloads[0]["errors"]
    if stream:
        assert rebuild_answer(payloads[0]["chunks"]["1"], payloads[0]["timings"]["1"], None).error is None
    assert await reward_of(payloads[0], tmp_path) == {1: 1.0}


@pytest.mark.parametrize("quirk", ["plain", "tool-args-split", "tool-call-whole"])
async def test_each_servers_way_of_streaming_a_tool_call_is_the_call_scored_in_full(tmp_path: Path,
                                                                                   quirk: str) -> None:
    payloads: list = []
    quirks = frozenset() if quirk == "plain" else frozenset({quirk})
    async with stack(tmp_path, [], payloads=payloads, quirks=quirks) as (api, key):
        raw = await answered(api, key, {**ASK, "tools": TOOLS, "stream": True}, payloads)
    chunks = streamed_chunks(raw)
    calls = [c for ch in chunks for choice in ch["choices"] for c in choice["delta"].get("tool_calls") or []]
    assert calls[0]["id"] and calls[0]["function"]["name"] == "search"
    assert json.loads("".join(c["function"].get("arguments") or "" for c in calls)) == {"q": "x"}
    assert [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]][-1] == "tool_calls"
    assert payloads[0]["winner"] == 1 and payloads[0]["errors"] == {}
    assert await reward_of(payloads[0], tmp_path) == {1: 1.0}



async def post_chat(api: str, key: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(api + "/v1/chat/completions", json=body,
                                                    headers={"api-key": key}) as r:
        return r.status, await r.read()


STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}  # the OpenAI SDK's usage in a stream


@pytest.mark.parametrize(("fields", "extra"), [
    (("seed",), {}),  # the API and the validator send a seed with every request
    (("stream_options",), STREAM_USAGE),
    (("parallel_tool_calls",), {"tools": TOOLS, "parallel_tool_calls": True}),  # SDKs send it by default
    (("seed", "stream_options"), STREAM_USAGE),  # refused one at a time: the first request still answered
], ids=lambda v: "+".join(v) if isinstance(v, tuple) else "")
async def test_a_server_that_refuses_a_field_the_answer_does_without_is_asked_again_without_it(
        tmp_path: Path, fields: tuple[str, ...], extra: dict[str, Any]) -> None:
    """Every request carries ``seed``: a miner in front of a server that refuses it (with a 400 naming it)
    failed every request, every synthetic job a 0, though its model answered them all."""
    received: list = []
    payloads: list = []
    async with stack(tmp_path, received, payloads=payloads, refuses=frozenset(fields)) as (api, key):
        for _ in range(2):
            status, raw = await post_chat(api, key, {**ASK, **extra})
            assert status == 200, raw
            if "tools" not in extra:
                assert content_of(raw, bool(extra.get("stream"))).strip() == "echo: hi there"
    sent = [any(f in b for f in fields) for b in received]
    assert sent == [True] * len(fields) + [False, False], "asked with them until each was refused, then never"
    assert all(p["errors"] == {} for p in payloads) and len(payloads) == 2
    assert await reward_of(payloads[0], tmp_path) == {1: 1.0}
async def test_a_refusal_a_server_answers_with_http_200_is_the_callers_400_and_not_scored(tmp_path: Path) -> None:
    """OpenRouter answers an error met once a request was under way with a 200 whose body is the error
    (its status in ``code``). Relayed as an answer, a prompt too long for the model was the miner's
    malformed answer (a 502 to the caller, a 0 for the miner); it is the refusal it reports."""
    payloads: list = []
    async with stack(tmp_path, [], payloads=payloads, quirks=frozenset({"error-200"})) as (api, key):
        status, raw = await post_chat(api, key, {**ASK, "max_tokens": 10_000})
        assert status == 400, raw
        error = json.loads(raw)["error"]
        assert error["code"] == "context_length_exceeded", error
        assert "upstream answered HTTP 200 with an error (400): This model's maximum context length" in \
            error["message"], error
        status, raw = await post_chat(api, key, ASK)
        assert status == 200 and content_of(raw, False) == "echo: hi there", raw
    assert len(payloads) == 1, "the refused request is not scored: the caller's, not the miner's"


async def test_the_parsed_completion_reports_a_200_error_body_too() -> None:
    """``complete`` (what a quality-profile wrapper calls) tells the same error apart as ``complete_raw``."""
    async with serve_app(create_fake_upstream([], quirks=frozenset({"error-200"}))) as url:
        backend = OpenAICompatibleBackend(url + "/v1")
        await backend.start()
        try:
            for call in (backend.complete, backend.complete_raw):
                with pytest.raises(BackendError, match="HTTP 200 with an error") as refused:
                    await call({**ASK, "max_tokens": 10_000})
                assert (refused.value.status, refused.value.code) == (400, MODEL_SERVER_REJECTED)
            assert (await backend.complete(ASK))["choices"][0]["message"]["content"] == "echo: hi there"
        finally:
            await backend.close()


NOTHING = "; no model is served until its model list is read (asked every 5s)"  # said while no model is served


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The WARNING lines logged while a test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING", format="{message}")
    try:
        yield lines
    finally:
        logger.remove(sink)


@contextlib.asynccontextmanager
async def backend_for(url: str, **kwargs: Any) -> AsyncIterator[OpenAICompatibleBackend]:
    backend = OpenAICompatibleBackend(url, **kwargs)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_server_with_no_model_list_serves_the_models_upstream_models_names(warnings: list[str]) -> None:
    """Servers without ``/models`` (Cloudflare Workers AI's OpenAI endpoint, some proxies) answer chat: the
    miner advertised nothing, for good, whatever UPSTREAM_MODELS said. Without it, the warning says to set it."""
    async with serve_app(create_fake_upstream([], quirks=frozenset({"no-models"}))) as url:
        async with backend_for(url + "/v1") as backend:
            assert backend.models() == [] and backend.tasks() == []
        assert warnings[-1].endswith("/v1: HTTP 404 (a server with no model list: name its models in "
                                     "UPSTREAM_MODELS)" + NOTHING)
        async with backend_for(url + "/v1", serve_models=[MODEL]) as backend:
            assert backend.models() == [MODEL] and "InferenceTask" in backend.tasks()
            assert (await backend.complete({"model": "default", **ASK}))["model"] == MODEL
            await backend.refresh_models()
        assert warnings[-1].endswith(f"has no model list (/models: HTTP 404): serving UPSTREAM_MODELS as named: {MODEL}")
        assert sum("serving UPSTREAM_MODELS" in w for w in warnings) == 1, "said once, not every refresh"


async def test_what_to_check_when_the_model_list_cannot_be_read(warnings: list[str]) -> None:
    """Ollama's own port without /v1, a wrong key, a list of another shape: each said only "HTTP 404",
    "HTTP 401", or nothing at all (no ``data``: the miner served nothing with no word why)."""
    ollama = web.Application()  # Ollama's own API beside its OpenAI one under /v1
    tags = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}  # /api/tags's shape
    ollama.router.add_get("/api/tags", lambda _r: web.json_response(tags))
    ollama.router.add_get("/proxy/models", lambda _r: web.json_response(tags))  # a proxy passing it on
    ollama.router.add_get("/v1/models", lambda _r: web.json_response({"object": "list", "data": None}))
    # a web UI in front (Open WebUI's pages answer any path): it was "Expecting value: line 1 column 1 (char 0)"
    ollama.router.add_get("/ui/models", lambda _r: web.Response(text="<!doctype html>", content_type="text/html"))
    keyed = web.Application()
    keyed.router.add_get("/v1/models", lambda _r: web.json_response({"error": "Unauthorized"}, status=401))
    async with serve_app(ollama) as url, serve_app(keyed) as keyed_url:
        async with backend_for(url):
            assert warnings[-1] == (f"could not list upstream models at {url}: HTTP 404 (UPSTREAM_URL is the "
                                    "OpenAI-compatible base URL, usually ending in /v1)" + NOTHING)
        async with backend_for(url + "/proxy"):
            assert warnings[-1] == (f"could not list upstream models at {url}/proxy: /models answered no 'data' "
                                    "list (keys: models)" + NOTHING)
        async with backend_for(url + "/ui"):
            assert warnings[-1] == (f"could not list upstream models at {url}/ui: HTTP 200 with 'text/html' that is not "
                                    "JSON, no model list (UPSTREAM_URL is the OpenAI-compatible base URL, usually "
                                    "ending in /v1)" + NOTHING)
        async with backend_for(url + "/v1"):  # Ollama with no model pulled yet
            assert warnings[-1] == (f"the upstream at {url}/v1 lists no model yet: nothing is served until it does "
                                    "(Ollama: pull one with ollama pull)")
        async with backend_for(keyed_url + "/v1", api_key="sk-wrong"):
            assert warnings[-1].endswith("/v1: HTTP 401 (check UPSTREAM_API_KEY)" + NOTHING)
        async with backend_for(keyed_url + "/v1"):  # it was "check UPSTREAM_API_KEY" of a setting left empty
            assert warnings[-1].endswith("/v1: HTTP 401 (the server wants a key, and UPSTREAM_API_KEY sets none)"
                                         + NOTHING)
    async with backend_for(url + "/v1"):  # the server down (not started yet, or gone)
        assert f"/v1: cannot connect to the model server at {url.removeprefix('http://')} (Connection refused): is " \
            "it running, and UPSTREAM_URL right?" in warnings[-1] and warnings[-1].endswith(NOTHING), warnings[-1]
    assert not any("sk-wrong" in w for w in warnings)


async def test_a_tls_failure_says_tls_not_operation_not_permitted(warnings: list[str], tmp_path: Path) -> None:
    """UPSTREAM_URL with https:// at a model server that speaks plain HTTP (vLLM and Ollama do, by default): the
    TLS handshake fails, and the start's WARNING said "cannot connect ... (Operation not permitted): is it running",
    the words of the SSL error's errno 1, not of the failure; so did a certificate the miner does not trust (one
    of the server's own making). Each names what failed now, and says what to check."""
    async with serve_app(create_fake_upstream([])) as url:
        plain = url.removeprefix("http://")
        async with backend_for(f"https://{plain}/v1"):
            assert f"/v1: the TLS handshake with the model server at {plain} failed (wrong version number): " \
                "https:// in UPSTREAM_URL for a server that speaks plain HTTP? (http:// then)" in warnings[-1], \
                warnings[-1]
            assert "Operation not permitted" not in warnings[-1]
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=self_signed(tmp_path))
    where = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, backend_for(f"https://{where}/v1"):
        assert f"/v1: the model server at {where} has a certificate this miner does not trust (self-signed " \
            "certificate): is UPSTREAM_URL's host the one its certificate names?" in warnings[-1], warnings[-1]


def self_signed(directory: Path) -> ssl.SSLContext:
    """A server's TLS context with a certificate of its own making, for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


async def test_n_never_reaches_a_server_that_refuses_it(tmp_path: Path) -> None:
    """llama.cpp refuses ``n`` other than 1 ("Only one completion choice is allowed"), as Groq does: the API
    asks each miner for one answer (each choice is a race of its own), so such a server answers every one."""
    received: list = []
    async with stack(tmp_path, received, refuses=frozenset({"n"})) as (api, key):
        status, raw = await post_chat(api, key, {**ASK, "n": 2})
    assert status == 200, raw
    assert [c["message"]["content"] for c in json.loads(raw)["choices"]] == ["echo: hi there"] * 2
    assert received and not any("n" in b for b in received)


@pytest.mark.parametrize(("field", "extra"), [
    ("logprobs", {"logprobs": True, "top_logprobs": 2}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("tools", {"tools": TOOLS}),  # llama-server without --jinja, an Ollama model without tool support
])
async def test_a_field_the_answer_needs_refused_is_the_callers_400_and_not_scored(
        tmp_path: Path, field: str, extra: dict[str, Any]) -> None:
    """Without it the answer would not be what was asked: the refusal reaches the caller, and the miner,
    whose server cannot do it, is not scored for it (neither a failure nor an answer)."""
    received: list = []
    payloads: list = []
    async with stack(tmp_path, received, payloads=payloads, refuses=frozenset({field})) as (api, key):
        status, raw = await post_chat(api, key, {**ASK, **extra})
        assert status == 400, raw
        assert json.loads(raw)["error"]["code"] == "model_server_rejected"
        status, raw = await post_chat(api, key, ASK)  # the same miner answers what its server can do
        assert status == 200, raw
    assert len(received) == 2 and field in received[0], "asked once: nothing to drop"
    assert len(payloads) == 1 and payloads[0]["errors"] == {}, "only the answered request is scored"


async def test_openais_reasoning_models_are_sent_what_they_take_and_its_other_models_all_of_it(
        tmp_path: Path) -> None:
    """OpenAI's reasoning models refuse ``max_tokens`` (for ``max_completion_tokens``) and a temperature or
    top_p other than 1: a miner serving one failed nearly every request (the validator's all carry a
    temperature, most a max_tokens). What one model refuses is still sent to the server's others."""
    received: list = []
    payloads: list = []
    ask = {"messages": ASK["messages"], "max_tokens": 12, "temperature": 0.7, "top_p": 0.9}
    async with stack(tmp_path, received, payloads=payloads, quirks=frozenset({"openai-reasoning-model"})) as (
            api, key):
        for model, stream in ((REASONER, False), (MODEL, False), (REASONER, True)):
            status, raw = await post_chat(api, key, {**ask, "model": model, "stream": stream})
            assert status == 200, raw
            assert content_of(raw, stream).strip() == "echo: hi there"
    sent = [(b["model"], sorted(set(b) & {"max_tokens", "max_completion_tokens", "temperature", "top_p"}))
            for b in received]
    assert sent == [(REASONER, ["max_tokens", "temperature", "top_p"]),  # refused for max_tokens
                    (REASONER, ["max_completion_tokens", "temperature", "top_p"]),  # for temperature
                    (REASONER, ["max_completion_tokens", "top_p"]),  # for top_p
                    (REASONER, ["max_completion_tokens"]),  # answered
                    (MODEL, ["max_tokens", "temperature", "top_p"]),  # its other model: all of it, at once
                    (REASONER, ["max_completion_tokens"])], sent  # learnt: at once
    assert received[3]["max_completion_tokens"] == 12
    assert [p["errors"] for p in payloads] == [{}, {}, {}]
    assert await reward_of(payloads[0], tmp_path) == {1: 1.0}


async def test_a_refusal_of_a_callers_value_strips_no_later_request() -> None:
    """Only the reasoning models' "Only the default (1) value" drops a temperature or top_p: a server's
    refusal of one value (vLLM's "top_p must be in (0, 1]") stays the caller's, and the next request keeps
    its sampling. Nor does a context-length refusal that names both token fields rename one (vLLM's)."""
    refusals = FieldRefusals()
    body = {"model": "m", "top_p": 0.0, "max_tokens": 10_000, "temperature": 0.5}
    assert not refusals.learn(body, "top_p must be in (0, 1], got 0.0.")
    assert not refusals.learn(body, "'max_tokens' or 'max_completion_tokens' is too large: 10000. This model's "
                                    "maximum context length is 4096 tokens")
    assert refusals.apply(body) == body
    assert refusals.learn(body, "Unsupported value: 'top_p' does not support 0.0 with this model. Only the default "
                                "(1) value is supported.")
    assert refusals.apply(body) == {"model": "m", "max_tokens": 10_000, "temperature": 0.5}
    assert refusals.apply({**body, "model": "other"}) == {**body, "model": "other"}, "learnt for that model only"


async def test_mistrals_422_for_seed_is_learnt_from_its_detail(tmp_path: Path) -> None:
    """Its refusal names the field only in pydantic's ``loc``, its ``message`` an object: read as text."""
    received: list = []
    async with stack(tmp_path, received, quirks=frozenset({"mistral-422"})) as (api, key):
        for stream in (False, True):
            status, raw = await post_chat(api, key, {**ASK, "stream": stream})
            assert status == 200, raw
            assert content_of(raw, stream).strip() == "echo: hi there"
    assert ["seed" in b for b in received] == [True, False, False]


SYNTHETIC_QUIRKS = frozenset({"mistral-422", "usage-every-chunk", "event-lines", "reasoning_content"})


@pytest.mark.parametrize("quirks", [frozenset(), SYNTHETIC_QUIRKS], ids=["plain", "quirks"])
async def test_the_validators_own_jobs_score_a_miner_behind_a_quirky_server_in_full(
        tmp_path: Path, quirks: frozenset[str]) -> None:
    """The synthetic path end to end: the validator's ``run_cycle`` (its wording: streamed or not, a model
    or "default" or none, a seed, its sampling) signs each job to a miner in front of the server, and its
    Scorer judges the answer against the same model with no quirk. Every job must score in full, as the
    same model's do behind a plain server (with ``seed`` refused, every job was a 0)."""
    registry = default_registry({"InferenceTask": 1.0})
    book = AvailabilityBook(entries={1: {"task_availabilities": {"InferenceTask": True},
                                         "llm_model_availabilities": {MODEL: True}}},
                            hotkeys={1: MINER.ss58_address})
    async with contextlib.AsyncExitStack() as st:
        upstream = await st.enter_async_context(serve_app(create_fake_upstream([], quirks=quirks)))
        backend = await st.enter_async_context(backend_for(upstream + "/v1"))
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        miner = await st.enter_async_context(serve_app(create_miner_app(backend, verifier)))
        view = MetagraphView(StaticSource(snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, miner[7:])})))
        await view.refresh()
        client = MinerClient(make_session(), Signer(VALIDATOR))
        st.push_async_callback(client.session.close)
        sc = await st.enter_async_context(scorer(tmp_path))
        rewards, streamed = [], set()
        for seed in range(6):
            job = await run_cycle(client, view, book, registry, build_datasets(builtin_corpus()),
                                  SyntheticConfig(sample_size=8, timeout=10.0), random.Random(seed))
            assert job is not None and job.errors == {}, job and job.errors
            streamed.add(job.bodies[1]["stream"])
            rewards.append(await sc.rewards(job))
    assert streamed == {True, False}, "both of the validator's ways of asking"
    assert rewards == [{1: 1.0}] * 6
