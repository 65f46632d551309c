"""The reference answer: an empty one skips the job (it scored every miner 0), and the cache tells
apart requests whose answers differ (the model, tools, stop sequences, not only messages and seed)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from neurons.validator.reference import CachedReference, OpenAIReference, ReferenceError
from neurons.validator.rewards.tools import Reply
from tests.helpers import serve_app

BODY = {"messages": [{"role": "user", "content": "Hi"}], "seed": 7, "task": "InferenceTask", "model": "a"}


def _llm(content: Any) -> web.Application:
    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@pytest.mark.parametrize("content", ["", "  \n", None])
async def test_a_reference_with_no_text_skips_the_job(content: Any) -> None:
    async with serve_app(_llm(content)) as url, aiohttp.ClientSession() as session:
        with pytest.raises(ReferenceError, match="no text"):
            await OpenAIReference(url + "/v1", session=session).answer(BODY)


async def test_a_reference_with_text_is_the_answer() -> None:
    async with serve_app(_llm("Hello!")) as url, aiohttp.ClientSession() as session:
        assert await OpenAIReference(url + "/v1", session=session).answer(BODY) == "Hello!"


class Counting:
    reproducible = False
    empty_ok = False

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def reply(self, body: dict[str, Any]) -> Reply:
        self.asked.append(body)
        return Reply(text=f"answer {len(self.asked)}")

    async def close(self) -> None:
        return None


async def test_the_cache_keys_on_what_the_answer_depends_on() -> None:
    inner = Counting()
    cache = CachedReference(inner)
    first = await cache.answer(BODY)
    assert await cache.answer({**BODY, "stream": True, "stream_options": {"include_usage": True}}) == first
    others = [{**BODY, "model": "b"}, {**BODY, "stop": ["\n"]}, {**BODY, "seed": 8},
              {**BODY, "tools": [{"type": "function", "function": {"name": "f"}}]},
              {**BODY, "response_format": {"type": "json_object"}}]
    answers = [await cache.answer(b) for b in others]
    assert len(set(answers)) == len(others) and first not in answers and len(inner.asked) == 1 + len(others)
