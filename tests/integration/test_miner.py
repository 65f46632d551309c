"""The reference miner over real HTTP: signed access only, streaming and JSON, availability."""

from __future__ import annotations

import json

import aiohttp
from yarl import URL

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend, generate_text
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import keypair, serve_app

VALIDATOR, MINER, STRANGER = keypair("//Validator"), keypair("//Miner1"), keypair("//Stranger")
BODY = {"messages": [{"role": "user", "content": "hi"}], "seed": 1, "model": "sn1/deterministic"}


def miner_app():
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    return create_miner_app(DeterministicBackend(), verifier)


async def call(url: str, path: str, body: dict, *, signer=VALIDATOR, receiver=MINER.ss58_address, headers=None):
    raw = json.dumps(body).encode()
    h = Signer(signer).headers("POST", URL(url + path), raw, receiver) if signer else {}
    h.update(headers or {})
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, data=raw, headers=h) as r:
            return r.status, r.content_type, await r.text()


async def test_signed_json_completion_is_deterministic() -> None:
    async with serve_app(miner_app()) as url:
        status, ctype, text = await call(url, "/v1/chat/completions", BODY)
    assert status == 200 and ctype == "application/json"
    out = json.loads(text)
    assert out["choices"][0]["message"]["content"] == generate_text(BODY)
    assert out["usage"]["completion_tokens"] > 0


async def test_signed_stream_has_chunks_and_done() -> None:
    async with serve_app(miner_app()) as url:
        status, ctype, text = await call(url, "/v1/chat/completions", {**BODY, "stream": True,
                                                                        "stream_options": {"include_usage": True}})
    assert status == 200 and ctype == "text/event-stream"
    datas = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    text_out = "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in datas[:-1]
                       if json.loads(d)["choices"])
    assert text_out == generate_text({**BODY, "stream": True})
    assert json.loads(datas[-2])["usage"]["total_tokens"] > 0
    assert all(d == json.dumps(json.loads(d), separators=(",", ":")) for d in datas[:-1]), "every chunk compact"


async def test_rejections_over_http() -> None:
    async with serve_app(miner_app()) as url:
        assert (await call(url, "/v1/chat/completions", BODY, signer=None))[0] == 400
        assert (await call(url, "/v1/chat/completions", BODY, receiver=STRANGER.ss58_address))[0] == 403
        status, _, text = await call(url, "/v1/chat/completions", BODY, signer=STRANGER)
        assert status == 403 and json.loads(text)["error"]["code"] == "NotAValidator"
        status, _, text = await call(url, "/v1/chat/completions", {**BODY, "model": "other"})
        assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found"
        status, _, text = await call(url, "/v1/chat/completions", {"messages": "nope"})
        assert status == 400 and json.loads(text)["error"]["param"] == "messages"


async def test_availability_lists_tasks_and_models() -> None:
    async with serve_app(miner_app()) as url:
        status, _, text = await call(url, "/availability", {})
    assert status == 200
    data = json.loads(text)
    assert data["llm_model_availabilities"] == {"sn1/deterministic": True}
    assert data["task_availabilities"]["InferenceTask"] is True


async def test_stop_sequences_end_the_answer_in_both_modes() -> None:
    full = generate_text(BODY)
    word = full.split()[3]
    stop = {**BODY, "stop": ["zzz-never", " " + word]}
    cut = full[: full.index(" " + word)]
    async with serve_app(miner_app()) as url:
        _, _, text = await call(url, "/v1/chat/completions", stop)
        _, _, streamed = await call(url, "/v1/chat/completions", {**stop, "stream": True})
        _, _, unstopped = await call(url, "/v1/chat/completions", {**BODY, "stop": "zzz-never"})
    choice = json.loads(text)["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (cut, "stop")
    datas = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in datas) == cut
    assert datas[-1]["choices"][0]["finish_reason"] == "stop"
    assert json.loads(unstopped)["choices"][0]["message"]["content"] == full
    assert DeterministicBackend().answer_text(stop) == cut, "the validator's reference stops at the same place"


async def test_a_question_marker_with_no_question_is_answered_not_a_500() -> None:
    """"Context: ...\\nQuestion:" with nothing after it raised IndexError: a 500 from the miner, and the
    same code as the validator's reference failed the organic scoring job."""
    body = {**BODY, "task": "QuestionAnsweringTask",
            "messages": [{"role": "user", "content": "Context: a b c.\nQuestion:"}]}
    async with serve_app(miner_app()) as url:
        for stream in (False, True):
            status, _, text = await call(url, "/v1/chat/completions", {**body, "stream": stream})
            assert status == 200, text


async def test_an_unserved_path_or_method_is_its_404_or_405_unsigned_too() -> None:
    """An operator's ``curl /metrics`` (the API and validator serve one) or ``curl`` of the chat route was a 400
    ``MalformedAuth`` "missing X-Bittensor-Version", as if the path were served and only a header missing."""
    async with serve_app(miner_app()) as url, aiohttp.ClientSession() as s:
        async with s.get(url + "/metrics") as r:
            assert r.status == 404 and (await r.json())["error"]["message"] == (
                "Invalid URL (GET /metrics): no such endpoint here.")
        async with s.get(url + "/v1/chat/completions") as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
            assert (await r.json())["error"]["code"] == "method_not_allowed"
        async with s.post(url + "/v1/chat/completions", json=BODY) as r:  # a served route still wants a signature
            assert r.status == 400 and (await r.json())["error"]["code"] == "MalformedAuth"
