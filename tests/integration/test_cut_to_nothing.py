"""An answer cut before its first word (``finish_reason: "length"``, no text, no call): through the real API, the
reference miner and a model server that answers so, over HTTP, and the OpenAI SDK.

It is the caller's answer only when the caller set a token limit (``max_tokens``; the Responses API's
``max_output_tokens``), as a cut JSON answer or call is (``answer_checks.caller_limited``): then chat's ``""`` with
``length``, and a Responses response ``incomplete`` with nothing in its output (as OpenAI's: no empty message).
Without one, no limit of the caller's cut it: it was a 200 all the same, chat's ``""`` and a response ``incomplete``
for a ``max_output_tokens`` it shows as null, won by any miner that sent nothing but the word ``length`` once every
other had failed. Now it is no answer, on both APIs alike: the ``502`` naming why. A model's thinking cut so is still
the answer (the model server's own limit, as OpenAI's reasoning models end: a ``reasoning`` item, no message)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from api.app import create_api_app
from tests.fake_upstream import MODEL
from tests.helpers import (
    VALIDATOR_KP,
    ApiUnderTest,
    build_api_context,
    keypair,
    openai_client,
    openai_miner,
    serve_app,
    snapshot,
)

MINER = keypair("//Miner1")
NOTHING_CUT = "the answer ended 'length' with nothing in it, and the request set no token limit"


def cut_at_once(thought: str | None) -> web.Application:
    """An OpenAI-compatible server whose every answer is cut before its first word: a role chunk (with ``thought``
    as ``reasoning_content``, as vLLM streams a reasoning model's), then ``finish_reason: "length"``; a non-streamed
    one the same as one object."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        message: dict[str, Any] = {"role": "assistant", "content": ""} | ({"reasoning_content": thought} if thought
                                                                         else {})
        usage = {"prompt_tokens": 3, "completion_tokens": 2 if thought else 0, "total_tokens": 5 if thought else 3}
        if not body.get("stream"):
            return web.json_response({"id": "up-1", "object": "chat.completion", "created": 1, "model": MODEL,
                                      "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                                      "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish in ((message, None), ({}, "length")):
            chunk = {"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@contextlib.asynccontextmanager
async def api_on(tmp_path: Path, thought: str | None = None) -> AsyncIterator[ApiUnderTest]:
    """The API, with one miner: the reference miner (openai backend) in front of ``cut_at_once``."""
    async with openai_miner(cut_at_once(thought), MINER.ss58_address) as miner, contextlib.AsyncExitStack() as st:
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address,
                                                         {1: (MINER.ss58_address, miner.removeprefix("http://"))}),
                                      VALIDATOR_KP)
        st.push_async_callback(ctx.client.session.close)
        key, _ = await ctx.store.create_key(100)
        url = await st.enter_async_context(serve_app(create_api_app(ctx, run_background=False)))
        yield ApiUnderTest(url=url, key=key, ctx=ctx)


async def last_response(stream: Any) -> Any:
    """A streamed response's last event."""
    events = [event async for event in stream]
    return events[-1]


@pytest.mark.parametrize("stream", [False, True])
async def test_cut_to_nothing_without_a_limit_is_no_answer_on_either_api(tmp_path: Path, stream: bool) -> None:
    async with api_on(tmp_path) as api:
        client = openai_client(api)
        for ask in (lambda: client.chat.completions.create(model="default", stream=stream,
                                                            messages=[{"role": "user", "content": "Hi"}]),
                    lambda: client.responses.create(model="default", input="Hi", stream=stream)):
            with pytest.raises(openai.InternalServerError) as raised:
                await ask()
            assert raised.value.status_code == 502 and raised.value.code == "no_valid_answer"
            assert NOTHING_CUT in raised.value.message
        await client.close()


async def test_cut_to_nothing_by_the_callers_limit_is_the_answer(tmp_path: Path) -> None:
    async with api_on(tmp_path) as api:
        client = openai_client(api)
        chat = await client.chat.completions.create(model="default", max_tokens=5,
                                                    messages=[{"role": "user", "content": "Hi"}])
        made = await client.responses.create(model="default", input="Hi", max_output_tokens=16)
        streamed = await last_response(await client.responses.create(model="default", input="Hi",
                                                                     max_output_tokens=16, stream=True))
        await client.close()
    assert (chat.choices[0].message.content, chat.choices[0].finish_reason) == ("", "length")
    assert streamed.type == "response.incomplete"
    for response in (made, streamed.response):
        assert response.status == "incomplete" and response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens" and response.max_output_tokens == 16
        assert response.output == [] and response.output_text == ""  # no empty message, as OpenAI's


async def test_thinking_cut_by_the_model_servers_own_limit_is_still_the_answer(tmp_path: Path) -> None:
    async with api_on(tmp_path, thought="Let me think about") as api:
        client = openai_client(api)
        chat = await client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}])
        made = await client.responses.create(model="default", input="Hi")
        await client.close()
    assert (chat.choices[0].message.content, chat.choices[0].finish_reason) == ("", "length")
    assert made.status == "incomplete" and [item.type for item in made.output] == ["reasoning"]
    assert made.output_text == ""
