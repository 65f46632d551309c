"""``UPSTREAM_MODEL_ALIASES``: a model server's model served under the name callers ask for (Ollama's
``qwen2.5:7b`` as ``Qwen/Qwen2.5-7B-Instruct``). A real miner in front of a real model server on 127.0.0.1 that
answers only its own name, as Ollama does (a 404 for any other)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neurons.miner.app import create_miner_app
from neurons.miner.main import build_backend
from shared.settings import MinerSettings, SettingsError, load_settings
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import keypair, serve_app

VALIDATOR, MINER = keypair("//Validator"), keypair("//Miner1")
PUBLIC, OWN = "Qwen/Qwen2.5-7B-Instruct", "qwen2.5:7b"
WORDS = ["The ", "model ", "said \"model\": \"qwen2.5:7b\""]  # its own name in its text stays as it is


def ollama(asked: list[str]) -> web.Application:
    """A model server that lists ``OWN`` alone and answers nothing else (Ollama's 404 ``model not found``).
    Streamed, each chunk's bytes are written in two pieces cut inside its model name, as a read may end."""
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        asked.append(body["model"])
        if body["model"] != OWN:
            return web.json_response({"error": {"message": f'model "{body["model"]}" not found, try pulling it first',
                                                "type": "api_error"}}, status=404)
        head = {"id": "c1", "created": 1, "model": OWN, "system_fingerprint": "fp_ollama"}
        if not body.get("stream"):
            return web.json_response({**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        deltas = [({"content": w}, None) for w in WORDS] + [({}, "stop")]
        for delta, finish in deltas:
            chunk = json.dumps({**head, "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            raw = f"data: {chunk}\n\n".encode()
            cut = raw.index(b"qwen2.5") + 4
            for piece in (raw[:cut], raw[cut:]):
                await response.write(piece)
                await asyncio.sleep(0.02)  # each piece its own read on the miner's side
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", lambda _r: web.json_response(
        {"object": "list", "data": [{"id": OWN, "object": "model"}, {"id": "llama3.2:1b", "object": "model"}]}))
    app.router.add_post("/v1/chat/completions", chat)
    return app


@asynccontextmanager
async def aliased_miner(upstream: str, aliases: str, models: str = "") -> AsyncIterator[str]:
    """A miner with the openai backend in front of ``upstream``, built from its settings as ``sn1 miner`` does."""
    settings = load_settings(MinerSettings, miner_backend="openai", upstream_url=upstream + "/v1",
                             upstream_model_aliases=aliases, upstream_models=models)
    backend = await build_backend(settings)
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    try:
        async with serve_app(create_miner_app(backend, verifier)) as url:
            yield url
    finally:
        await backend.close()


async def call(url: str, path: str, body: dict[str, Any]) -> tuple[int, str]:
    raw = json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.post(url + path, data=raw, headers={
            **Signer(VALIDATOR).headers("POST", path, raw, MINER.ss58_address), "Content-Type": "application/json"}) as r:
        return r.status, await r.text()


def chat(model: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def streamed(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def test_a_model_served_under_its_public_name_is_advertised_asked_and_answered_so() -> None:
    """Without it an Ollama miner advertised ``qwen2.5:7b``: callers and the validator ask for the Hugging Face name,
    so it got no traffic. Its model server is asked by its own name; callers are answered with the one they asked."""
    asked: list[str] = []
    async with serve_app(ollama(asked)) as upstream, aliased_miner(upstream, f"{PUBLIC}={OWN}") as url:
        status, text = await call(url, "/availability", {})
        assert status == 200 and sorted(json.loads(text)["llm_model_availabilities"]) == [PUBLIC, "llama3.2:1b"]
        for model in (PUBLIC, "default"):  # default: the first served, here the public name
            status, text = await call(url, "/v1/chat/completions", chat(model, stream=False))
            answer = json.loads(text)
            assert status == 200 and answer["model"] == PUBLIC, text
            assert answer["choices"][0]["message"]["content"] == "".join(WORDS)
            status, text = await call(url, "/v1/chat/completions", chat(model, stream=True))
            chunks = streamed(text)
            assert status == 200 and len(chunks) == 4 and {c["model"] for c in chunks} == {PUBLIC}, text
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "".join(WORDS)
            assert text.rstrip().endswith("data: [DONE]")
        # its own name is no longer a model it serves; a model without an alias is asked and answered as it is
        status, text = await call(url, "/v1/chat/completions", chat(OWN, stream=False))
        assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found", text
    assert asked == [OWN] * 4


async def test_upstream_models_may_name_a_model_by_either_name() -> None:
    asked: list[str] = []
    async with serve_app(ollama(asked)) as upstream:
        for named in (PUBLIC, OWN):
            async with aliased_miner(upstream, f"{PUBLIC}={OWN}", models=named) as url:
                status, text = await call(url, "/availability", {})
                assert json.loads(text)["llm_model_availabilities"] == {PUBLIC: True}, named


@pytest.mark.parametrize(("value", "says"), [
    (PUBLIC, f"'{PUBLIC}' is not public=upstream"),
    (f"{PUBLIC}=", "leaves a name out"),
    (f"{PUBLIC}={OWN},{PUBLIC}=llama3.2:1b", "each public and each upstream name may be given once"),
    (f"a={OWN},b={OWN}", "each public and each upstream name may be given once"),
    ("a=b,b=c", "b is both a public name and an upstream one"),
    ("default=x", "'default' is no model's name"),
])
def test_a_bad_alias_stops_the_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch, value: str,
                                                        says: str) -> None:
    monkeypatch.setenv("UPSTREAM_MODEL_ALIASES", value)
    with pytest.raises(SettingsError, match="^UPSTREAM_MODEL_ALIASES: ") as error:
        load_settings(MinerSettings)
    assert says in str(error.value) and len(str(error.value).splitlines()) == 1


def test_aliases_are_read_as_written_or_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_MODEL_ALIASES", f" {PUBLIC} = {OWN} , a=b ")
    assert load_settings(MinerSettings).upstream_model_aliases == {PUBLIC: OWN, "a": "b"}
    monkeypatch.setenv("UPSTREAM_MODEL_ALIASES", json.dumps({PUBLIC: OWN}))
    assert load_settings(MinerSettings).upstream_model_aliases == {PUBLIC: OWN}


async def test_an_alias_for_a_model_the_server_does_not_list_is_a_health_problem() -> None:
    """A tag mistyped or a model not pulled: its public name was advertised by nobody, and nothing said why."""
    async with serve_app(ollama([])) as upstream, aliased_miner(upstream, f"{PUBLIC}=qwen2.5:7b-instruct") as url:
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            health = await r.json()
    assert PUBLIC not in health["models"], health
    assert health["problems"] == [f"UPSTREAM_MODEL_ALIASES names qwen2.5:7b-instruct (for {PUBLIC}) that the model "
                                  f"server at {upstream}/v1 does not list: not served"], health
