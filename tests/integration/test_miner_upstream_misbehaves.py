"""A model server that misbehaves after (or instead of) answering: the reference miner's caller still gets what
the server said at once, and the miner does not hold its request open for the server's timeout."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web
from yarl import URL

from shared.protocol import DEADLINE_HEADER
from shared.signing import Signer
from tests.fake_upstream import MODEL
from tests.helpers import VALIDATOR_KP, chunk, keypair, openai_miner, sse, wait_until

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


async def streamed(url: str, deadline: str | None) -> tuple[int, bytes, float]:
    """A validator's streamed chat to the miner, read to the miner's end: its status, bytes, and the seconds
    until the miner's answer was whole."""
    raw = json.dumps({"messages": [USER], "stream": True}).encode()
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
