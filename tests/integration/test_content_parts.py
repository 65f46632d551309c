"""Content parts through the whole path: the API, a miner's openai backend, its model server.

Each part type OpenAI's chat takes, with what it carries, reaches the model server as the caller sent it (a
``data:`` URL untouched, ``detail``, a filename, a vendor's field in the part); the Responses API's parts arrive as
their chat parts. A model server that cannot read a part (a text-only model given an image) refuses the request:
the caller gets that refusal as a 400 ``model_server_rejected``, never a miner's 502. The parts no miner can serve
are the API's own 400s (``tests/integration/test_api_surface.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fake_upstream import MODEL
from tests.integration.test_miner_openai_backend import post_chat, stack

PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQK"
PARTS = [{"type": "text", "text": "What is in these?"},
         {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
         {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}},
         {"type": "file", "file": {"file_data": PDF, "filename": "paper.pdf"}},
         {"type": "image_url", "image_url": {"url": PNG}, "uuid": "vendor-field"}]


async def test_each_part_openai_takes_reaches_the_model_server_as_sent(tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        for stream in (False, True):
            async with s.post(api + "/v1/chat/completions", headers={"api-key": key}, json={
                    "messages": [{"role": "user", "content": PARTS}], "stream": stream}) as r:
                assert r.status == 200, await r.text()
                await r.read()
            assert received[-1]["messages"] == [{"role": "user", "content": PARTS}], stream
        body = {"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is in these?"},
            {"type": "input_image", "image_url": PNG, "detail": "low"},
            {"type": "input_file", "file_data": PDF, "filename": "paper.pdf"}]}]}
        async with s.post(api + "/v1/responses", json=body, headers={"api-key": key}) as r:
            assert r.status == 200, await r.text()
    assert received[-1]["messages"][-1]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "file", "file": {"file_data": PDF, "filename": "paper.pdf"}}]


# How text-only model servers refuse a part they cannot read: most with a 400, llama.cpp's server without an mmproj
# with a 500 (ggml-org/llama.cpp#15377, its words and body), before that with a 500 naming the part (#12947).
REFUSALS = {
    "a 400": (400, {"object": "error", "message": "{kind} input is not supported by this model", "type":
                   "BadRequestError", "code": 400}),
    "llama.cpp": (500, {"error": {"code": 500, "message": "{kind} input is not supported - hint: if this is "
                                  "unexpected, you may need to provide the mmproj", "type": "server_error"}}),
    "llama.cpp-before": (500, {"error": {"code": 500, "message": 'Failed to parse messages: Unsupported content '
                                         'part type: "{part}"', "type": "server_error"}}),
}
KINDS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def text_only_server(style: str) -> web.Application:
    """A model server that reads text only: any other part is refused as ``REFUSALS[style]`` refuses it."""
    status, refusal = REFUSALS[style]

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        parts = [p["type"] for m in body["messages"] if isinstance(m.get("content"), list) for p in m["content"]
                 if p["type"] != "text"]
        if parts:
            text = json.dumps(refusal).replace("{kind}", KINDS[parts[0]]).replace("{part}", parts[0])
            return web.Response(text=text, status=status, content_type="application/json")
        return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("style", list(REFUSALS))
async def test_a_part_the_model_server_cannot_read_is_the_callers_400_not_a_502(tmp_path: Path, style: str) -> None:
    """llama.cpp's 500 was relayed as the miner's 502: the caller got a 502, and any caller sending images could
    have every llama.cpp miner fail (scored 0, set aside). Now it is the caller's 400, as a server's 400 was."""
    async with stack(tmp_path, [], server=text_only_server(style)) as (api, key), aiohttp.ClientSession() as s:
        for part in PARTS[1:4]:
            for stream in (False, True):
                body: dict[str, Any] = {"messages": [{"role": "user", "content": [PARTS[0], part]}], "stream": stream}
                status, answer = await post_chat(s, api, key, body)
                assert status == 400, (part["type"], stream, answer)
                assert answer["error"]["code"] == "model_server_rejected", answer
                assert "not supported" in answer["error"]["message"] or "Unsupported" in answer["error"]["message"]
        status, answer = await post_chat(s, api, key, {"messages": [{"role": "user", "content": PARTS[:1]}]})
        assert status == 200, answer


async def test_another_model_server_500_is_still_the_miners_failure(tmp_path: Path) -> None:
    """Only a 500 saying a part cannot be read is the caller's: any other stays the miner's 502."""
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 500, "message": "CUDA out of memory", "type": "server_error"}},
                                 status=500)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    async with stack(tmp_path, [], server=app) as (api, key), aiohttp.ClientSession() as s:
        status, answer = await post_chat(s, api, key, {"messages": [{"role": "user", "content": PARTS[:2]}]})
    assert status == 502, answer
