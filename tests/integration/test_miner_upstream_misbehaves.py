"""A model server that misbehaves after (or instead of) answering: the reference miner's caller still gets what
the server said at once, and the miner does not hold its request open for the server's timeout."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web
from loguru import logger
from yarl import URL

from shared.protocol import DEADLINE_HEADER
from shared.signing import Signer
from tests.fake_upstream import MODEL
from tests.helpers import VALIDATOR_KP, chunk, keypair, log_lines, openai_miner, sse, wait_until

MINER = keypair("//Miner1")
USER = {"role": "user", "content": "hi"}
FIRST, DONE = sse(chunk("4", finish="stop"))


def stalling_upstream(pieces: list[bytes], stalled: list[float]) -> web.Application:
    """An OpenAI-compatible server that streams ``pieces`` (each a write), then keeps the stream open without
    ending it (a hung server, or a proxy that holds the response open): it notes when its stream was dropped."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.05)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stalled.append(time.monotonic())
            raise
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def answering(body: bytes, content_type: str) -> web.Application:
    """A model server listing ``MODEL`` whose every chat completion is ``body``, a 200 of ``content_type``."""
    upstream = web.Application()
    upstream.router.add_get("/v1/models", lambda _r: web.json_response({"object": "list", "data": [{"id": MODEL}]}))
    upstream.router.add_post("/v1/chat/completions", lambda _r: web.Response(body=body, content_type=content_type))
    return upstream


async def streamed(url: str, deadline: str | None, *, stream: bool = True) -> tuple[int, bytes, float]:
    """A validator's chat to the miner (streamed unless ``stream`` is false), read to the miner's end: its status,
    bytes, and the seconds until the miner's answer was whole."""
    raw = json.dumps({"messages": [USER], "stream": stream}).encode()
    headers = Signer(VALIDATOR_KP).headers("POST", URL(url + "/v1/chat/completions"), raw, MINER.ss58_address)
    headers |= {"Content-Type": "application/json"} | ({DEADLINE_HEADER: deadline} if deadline else {})
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", data=raw, headers=headers,
                                                    timeout=aiohttp.ClientTimeout(total=20)) as r:
        return r.status, await r.read(), time.monotonic() - started


async def test_an_answer_whole_in_one_read_is_not_held_while_the_model_server_keeps_its_stream_open() -> None:
    """The whole answer and its ``[DONE]`` in one read: the caller had nothing until the model server ended the
    stream, so a server that held it open cost the caller the whole deadline, and the answer with it."""
    stalled: list[float] = []
    async with openai_miner(stalling_upstream([FIRST + DONE], stalled), MINER.ss58_address) as url:
        for deadline in ("5", None):
            status, body, took = await streamed(url, deadline)
            assert status == 200 and body.endswith(b"data: [DONE]\n\n") and b'"4"' in body, body
            assert took < 2.0, took
        await wait_until(lambda: len(stalled) == 2, 2.0)  # its request to the model server dropped, not kept


async def test_a_stream_the_model_server_keeps_open_after_its_done_ends_at_the_done() -> None:
    """Its ``[DONE]`` in a later read: the miner's stream stayed open until the deadline (the caller, reading to
    the end, waited for it), and the request was logged a failure (``mid-stream: the caller's deadline passed``)
    with a deadline's error event written after the ``[DONE]``."""
    stalled: list[float] = []
    async with openai_miner(stalling_upstream([FIRST, DONE, b": still here\n\n"], stalled), MINER.ss58_address) as url:
        status, body, took = await streamed(url, "5")
        await wait_until(lambda: bool(stalled), 2.0)
    assert status == 200 and body == FIRST + DONE, body
    assert took < 2.0, took


UPSTREAM_KEY = "sk-miner-0123456789abcdefSECRET"


def key_quoting_upstream() -> web.Application:
    """An OpenAI-compatible server that refuses the key it was sent inside a 200, quoting it (as OpenAI's 401
    does): as an error object for a JSON answer (OpenRouter's shape for an error met once under way), as the
    stream's opening error event for a streamed one (llama.cpp's, vLLM's shape)."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        error = {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                           "code": 401}}
        if not body.get("stream"):
            return web.json_response(error)
        return web.Response(body=f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n",
                            content_type="text/event-stream")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_error_inside_a_200_never_carries_the_model_servers_key_to_the_caller_or_the_log(stream: bool) -> None:
    """UPSTREAM_API_KEY is masked out of the error text a model server answers with an error status; the same
    error inside a 200 (a JSON error object, a stream's opening error event) went to the miner's log and, in its
    502, to the API and on to the API's callers, key and all."""
    lines, sink = log_lines("INFO")
    try:
        async with openai_miner(key_quoting_upstream(), MINER.ss58_address, api_key=UPSTREAM_KEY) as url:
            status, body, _took = await streamed(url, "5", stream=stream)
    finally:
        logger.remove(sink)
    assert status == 502 and b"Incorrect API key provided: ***" in body, body
    assert UPSTREAM_KEY.encode() not in body, body
    assert any("Incorrect API key provided: ***" in line for line in lines), lines
    assert not [line for line in lines if UPSTREAM_KEY in line]


def erring_upstream(status: int, error: dict) -> web.Application:
    """A model server that answers every chat, streamed or not, with the JSON ``error`` and ``status``."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(error, status=status)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


TOO_LONG = "This model's maximum context length is 4096 tokens"


@pytest.mark.parametrize(("status", "error", "expected"), [
    # an error as JSON with a 200, asked for a stream (OpenRouter's shape): its status and words, not "upstream
    # answered HTTP 200 with 'application/json', not 'text/event-stream'", a 502 (and a 0) for the caller's request
    (200, {"error": {"code": 400, "message": TOO_LONG}}, (400, f"upstream answered HTTP 200 with an error (400): {TOO_LONG}")),
    (200, {"error": {"code": 502, "message": "Provider returned error"}},
     (502, "upstream answered HTTP 200 with an error (502): Provider returned error")),
    # vLLM's older error shape, and TGI's: quoted as the JSON they came in
    (400, {"object": "error", "message": TOO_LONG, "type": "BadRequestError", "param": None, "code": 400},
     (400, f"upstream HTTP 400: {TOO_LONG}")),
    (500, {"error": "CUDA out of memory", "error_type": "generation"}, (502, "upstream HTTP 500: CUDA out of memory")),
], ids=["200-refusal", "200-failure", "vllm-object-error", "tgi-error"])
async def test_an_error_a_model_server_answers_as_json_is_told_in_its_own_words(
        status: int, error: dict, expected: tuple[int, str]) -> None:
    async with openai_miner(erring_upstream(status, error), MINER.ss58_address) as url:
        got, body, _took = await streamed(url, "5", stream=True)
    assert (got, json.loads(body)["error"]["message"]) == expected, body
    assert json.loads(body)["error"]["code"] == ("model_server_rejected" if expected[0] == 400 else "backend_error")


@pytest.mark.parametrize(("body", "said"), [
    (b"<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
    (b'{"id": "chatcmpl-1", "object": "chat.comp', '{"id": "chatcmpl-1", "object": "chat.comp'),  # cut off
    (b'{"result": "4", "key": "sk-secret-key-1234"}', '{"result": "4", "key": "***"}'),  # another API's answer
    (b"", "an empty body"),
])
async def test_a_200_labelled_json_that_is_no_chat_completion_is_the_miners_502_saying_what_came(
        body: bytes, said: str) -> None:
    """Relayed as it came, such a body was a 0 at the API and the validator while the miner logged ``status=200``:
    its operator saw nothing wrong. It is the miner's 502 now, with a WARNING quoting its start (the key masked)."""
    upstream = answering(body, "application/json")
    lines, sink = log_lines()
    try:
        async with openai_miner(upstream, MINER.ss58_address, api_key="sk-secret-key-1234") as url:
            status, answer, _took = await streamed(url, None, stream=False)
    finally:
        logger.remove(sink)
    assert status == 502, answer
    error = json.loads(answer)["error"]
    assert error["code"] == "backend_error"
    assert error["message"] == f"upstream answered HTTP 200 with no chat completion (no 'choices'): {said}"
    assert any("status=502" in line and error["message"] in line for line in lines), lines
    assert not any("sk-secret" in line for line in lines)


@pytest.mark.parametrize(("stream", "said"), [
    (b"", "upstream stream ended before its first event (no answer)"),
    (b": ping\n\n", "upstream stream ended before its first event (no answer)"),
    (b"data: [DONE]\n\n", "upstream stream ended before its first chunk (data: [DONE] at once: no answer)"),
    (b"data: Hello there\n\ndata: [DONE]\n\n",
     "upstream stream opened with no chat completion chunk (no 'choices'): Hello there"),
    (b'event: message\ndata: {"token": {"text": "4"}, "key": "sk-secret-key-1234"}\n\n',
     "upstream stream opened with no chat completion chunk (no 'choices'): {\"token\": {\"text\": \"4\"}, \"key\": \"***\"}"),
])
async def test_a_stream_that_opens_with_no_chat_completion_chunk_is_the_miners_502_saying_what_came(
        stream: bytes, said: str) -> None:
    """An event stream with no answer in it (empty, ``[DONE]`` at once, another API's events, text that is no JSON)
    was relayed: an answer with no ``finish_reason``, a 0 at the API and the validator, logged ``status=200``."""
    upstream = answering(stream, "text/event-stream")
    lines, sink = log_lines()
    try:
        async with openai_miner(upstream, MINER.ss58_address, api_key="sk-secret-key-1234") as url:
            status, answer, _took = await streamed(url, None)
    finally:
        logger.remove(sink)
    assert status == 502, answer
    assert json.loads(answer)["error"]["message"] == said
    assert any("status=502" in line and said in line for line in lines), lines
    assert not any("sk-secret" in line for line in lines)


async def test_a_stream_that_ends_without_a_finish_reason_or_done_is_a_failure_the_miner_tells() -> None:
    """Words, then the stream's end, with no ``finish_reason`` and no ``[DONE]`` (a proxy's time or size limit cut
    it cleanly): the miner added its ``[DONE]`` and logged ``status=200``, and the API and the validator took the
    answer as cut short, a 0. It ends with an error event now, and the request's line says so."""
    cut = b"".join(sse(chunk("The answer"), chunk(" is"), done=False))
    upstream = answering(cut, "text/event-stream")
    lines, sink = log_lines()
    try:
        async with openai_miner(upstream, MINER.ss58_address) as url:
            status, answer, _took = await streamed(url, None)
    finally:
        logger.remove(sink)
    said = "upstream stream ended without a finish_reason or [DONE]: cut short, a failed answer"
    assert status == 200 and answer.startswith(cut) and answer.endswith(b"data: [DONE]\n\n"), answer
    error = json.loads(answer[len(cut):].split(b"\n\n")[0].removeprefix(b"data: "))["error"]
    assert error["message"].startswith(said) and error["code"] == "backend_error", error
    assert any("status=502" in line and f"mid-stream: {said}" in line for line in lines), lines
