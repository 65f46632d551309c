"""A request to a miner says what answer it takes (``Accept``): an SSE stream when its body asks for one
(``"stream": true``), one JSON completion when not, JSON from ``/availability``; the API and the validator
alike, and the reference miner asks its model server the same way. Every chat request said
``text/event-stream``, so a miner (or a proxy before it) that goes by ``Accept`` streamed to a non-streaming
caller, and the availability poll and the model server's calls said ``*/*``."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.validator.availability import poll_one
from neurons.validator.reference import OpenAIReference
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.fake_upstream import MODEL
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    api_with_miners,
    chunk,
    keypair,
    post,
    scripted_miner_app,
    serve_app,
    sse,
    synthetic_jobs,
)

MINER = keypair("//Miner1")
USER = {"role": "user", "content": "hi"}
JSON, EVENT_STREAM = "application/json", "text/event-stream"
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}]}


def answering() -> Script:
    return Script([(0, b"".join(sse(chunk("4", finish="stop"))))])


def accepted(script: Script) -> list[tuple[bool, str]]:
    """Each request's body's ``stream`` and the ``Accept`` it came with."""
    pairs = zip(script.bodies, script.headers, strict=True)
    return [(body.get("stream") is True, headers.get("Accept")) for body, headers in pairs]


async def test_the_api_tells_each_miner_the_answer_it_takes(tmp_path: Path) -> None:
    """A non-streaming caller's miners are asked for JSON, a streaming caller's for an SSE stream."""
    scripts = {1: answering(), 2: answering()}
    async with api_with_miners(tmp_path, scripts) as api:
        for stream in (False, True):
            status, _, text = await post(api, {"messages": [USER], "stream": stream})
            assert status == 200, text
    for script in scripts.values():
        assert accepted(script) == [(False, JSON), (True, EVENT_STREAM)], accepted(script)


async def test_the_validators_jobs_and_availability_poll_say_what_they_take() -> None:
    """A synthetic job's ``Accept`` follows its body as a caller's request does (a difference would tell the two
    apart); the availability poll takes JSON."""
    script = answering()
    polled: list[str | None] = []

    async def availability(request: web.Request) -> web.Response:
        polled.append(request.headers.get("Accept"))
        return web.json_response({"task_availabilities": {}, "llm_model_availabilities": {}})

    app = scripted_miner_app(script)
    app.router.add_post("/availability", availability)
    async with serve_app(app) as url, make_session() as session:
        client = MinerClient(session, Signer(VALIDATOR_KP))
        neuron = (await synthetic_jobs(client, url, cycles=6)).by_uid(1)
        assert neuron is not None
        assert await poll_one(client, neuron, 3.0) is not None
    jobs = accepted(script)
    assert {stream for stream, _ in jobs} == {False, True}, f"both kinds of job were sent: {jobs}"
    assert all(accept == (EVENT_STREAM if stream else JSON) for stream, accept in jobs), jobs
    assert polled == [JSON]


def model_server(asked: list[tuple[str, str | None]]) -> web.Application:
    """An OpenAI-compatible server noting each request's ``Accept``: its model list, a completion (streamed
    when asked)."""

    async def models(request: web.Request) -> web.Response:
        asked.append(("models", request.headers.get("Accept")))
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        stream = (await request.json()).get("stream") is True
        asked.append(("stream" if stream else "json", request.headers.get("Accept")))
        if stream:
            return web.Response(body=b"".join(sse(chunk("4", finish="stop"))), content_type=EVENT_STREAM)
        return web.json_response(COMPLETION)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_the_reference_miner_and_the_validators_reference_ask_their_model_server_what_they_take() -> None:
    asked: list[tuple[str, str | None]] = []
    async with serve_app(model_server(asked)) as url, make_session() as session:
        backend = OpenAICompatibleBackend(url + "/v1")
        await backend.start()
        try:
            body = {"model": MODEL, "messages": [USER]}
            answer = json.loads(await backend.complete_raw({**body, "stream": False}))
            assert answer.pop("usage")["estimated"] is True  # its server gave none (``counted_usage``)
            assert answer == COMPLETION
            assert b"data: [DONE]" in b"".join([piece async for piece in backend.stream_raw({**body, "stream": True})])
        finally:
            await backend.close()
        assert await OpenAIReference(url + "/v1", session=session, model=MODEL).answer({"messages": [USER]}) == "4"
    assert asked == [("models", JSON), ("json", JSON), ("stream", EVENT_STREAM), ("json", JSON)], asked
