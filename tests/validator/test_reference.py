"""The reference answer: an empty one skips the job (it scored every miner 0), and the cache tells
apart requests whose answers differ (the model, tools, stop sequences, not only messages and seed)."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from neurons.miner.media_urls import MediaFetcher
from neurons.validator.reference import CachedReference, OpenAIReference, ReferenceError, UnscorableRequest
from neurons.validator.rewards.tools import Reply
from tests.fake_upstream import MODEL, REASONER, create_fake_upstream
from tests.helpers import log_lines, serve_app
from tests.integration.test_miner_media_urls import (
    IMAGE,
    ScriptedDNS,
    loopback_only,
    media_servers,
    sent_urls,
    with_image,
)
from tests.validator.test_tool_rewards import score, scorer_with

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


SAMPLED = {"messages": [{"role": "user", "content": "Hi"}], "seed": 7, "task": "InferenceTask",
           "sampling_parameters": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 64}}


@pytest.mark.parametrize(("quirk", "model", "after"), [
    ("mistral-422", MODEL, {"seed": None}),
    ("openai-reasoning-model", REASONER, {"max_tokens": None, "max_completion_tokens": 64, "temperature": None,
                                          "top_p": None}),
])
async def test_a_reference_learns_what_its_server_refuses_and_answers(quirk: str, model: str,
                                                                      after: dict[str, Any]) -> None:
    """A hosted reference that refuses a field every validator request carries (Mistral's ``seed``, OpenAI's
    reasoning models' ``max_tokens`` and sampling) skipped every job: "reference LLM answered HTTP 400". Now
    the field is dropped (or renamed) as a miner's backend drops it, for that model, and the next request
    goes without it at once."""
    received: list[dict[str, Any]] = []
    async with serve_app(create_fake_upstream(received, quirks=frozenset({quirk}))) as url, \
            aiohttp.ClientSession() as session:
        reference = OpenAIReference(url + "/v1", session=session, model=model)
        assert await reference.answer(SAMPLED) == "echo: Hi"
        first = len(received)
        assert first > 1, "the first request was refused and asked again"
        assert await reference.answer({**SAMPLED, "seed": 8}) == "echo: Hi"
        assert len(received) == first + 1, "what was learnt is not asked again"
    for field, value in after.items():
        assert received[-1].get(field) == value, (field, received[-1])


async def test_a_refusal_names_the_servers_reason_without_its_key() -> None:
    """A wrong key or a refused request said only "HTTP 401": an operator could not tell which. The reason is
    quoted, the key masked out of it."""
    async def refuse(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}.",
                                            "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        with pytest.raises(ReferenceError) as e:
            await OpenAIReference(url + "/v1", session=session, api_key="sk-secret-42").answer(BODY)
    assert "HTTP 401 (check REFERENCE_LLM_API_KEY): Incorrect API key provided: ***." in str(e.value) and "sk-secret-42" not in str(e.value)


def _answering(raw: bytes) -> web.Application:
    """A server whose chat completion is a 200 carrying ``raw``, whatever it is."""
    async def completions(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=raw, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


@pytest.mark.parametrize(("raw", "failure"), [
    (b"<html>busy</html>", "JSONDecodeError"),
    (b'{"choices": []}', "IndexError"),
    (b'{"choices": [{"text": "Hi"}]}', "KeyError"),
    (b'["Hi"]', "TypeError"),
    (b'{"choices": [{"message": "Hi"}]}', "AttributeError"),
], ids=["not-json", "no-choice", "no-message", "not-an-object", "message-not-an-object"])
async def test_an_answer_that_is_no_chat_completion_skips_the_job_in_one_line(raw: bytes, failure: str) -> None:
    async with serve_app(_answering(raw)) as url, aiohttp.ClientSession() as session:
        with pytest.raises(ReferenceError) as e:
            await OpenAIReference(url + "/v1", session=session).reply(BODY)
    assert str(e.value).startswith(f"reference LLM failed: {failure}: "), str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


async def test_the_rechecks_question_fails_as_a_job_does_but_does_not_read_the_answer() -> None:
    """``probe`` (the recheck's short question) fails as ``reply`` does on a server it cannot reach or that
    answers no JSON; a JSON answer of any shape is a model that answers again."""
    async with aiohttp.ClientSession() as session:
        async with serve_app(_answering(b"<html>busy</html>")) as url:
            with pytest.raises(ReferenceError, match=r"^reference LLM failed: JSONDecodeError: "):
                await OpenAIReference(url + "/v1", session=session).probe()
        gone = url  # the server has stopped: nothing listens there any more
        for ask in (lambda r: r.probe(), lambda r: r.reply(BODY)):
            with pytest.raises(ReferenceError, match=r"^reference LLM failed: ClientConnectorError: "):
                await ask(OpenAIReference(gone + "/v1", session=session))
        async with serve_app(_answering(b'{"choices": []}')) as url:
            await OpenAIReference(url + "/v1", session=session).probe()


async def test_a_callers_model_server_fields_do_not_reach_the_reference_model() -> None:
    """An organic request is asked of the validator's reference model as it came: a caller's vLLM-only fields (a
    Jinja ``chat_template`` rendered on the validator's server, a ``guided_regex``, ``best_of``) reached it, as
    they reached miners. It gets what a miner's model server gets (``upstream_request``): OpenAI's fields, the
    sampling extras, the subnet's sampling block in their place."""
    received: list[dict[str, Any]] = []
    async with serve_app(create_fake_upstream(received)) as url, aiohttp.ClientSession() as session:
        reference = OpenAIReference(url + "/v1", session=session, model=MODEL)
        asked = {**BODY, "chat_template": "{{ 7*7 }}", "guided_regex": "(a|aa)*b", "best_of": 64, "n": 9,
                 "reasoning_effort": "low", "min_p": 0.1, "sampling_parameters": {"top_k": 5, "max_new_tokens": 9}}
        assert await reference.answer(asked) == "echo: Hi"
    assert set(received[-1]) == {"messages", "model", "seed", "stream", "reasoning_effort", "min_p", "top_k",
                                 "max_tokens"}, received[-1]


async def test_a_callers_private_media_url_is_never_fetched_by_the_reference_server() -> None:
    """An organic request's image URL reached the validator's reference server, which fetched it from inside the
    validator's network (a private address, the metadata address). The validator fetches media as a miner does
    (``media_urls``): a private URL skips the job without asking the reference model, and without marking it
    failing (any caller could otherwise make it look down)."""
    received: list[dict[str, Any]] = []
    async with serve_app(create_fake_upstream(received)) as url, aiohttp.ClientSession() as session:
        reference = CachedReference(OpenAIReference(url + "/v1", session=session, model=MODEL))
        for private in ("http://169.254.169.254/latest/meta-data/", "http://localhost:8000/v1/models",
                        "file:///etc/passwd"):
            with pytest.raises(UnscorableRequest):
                await reference.answer(with_image(private))
        await reference.close()
    assert received == [] and reference.status.last_error is None


async def test_the_reference_server_gets_the_fetched_bytes_never_the_url() -> None:
    received: list[dict[str, Any]] = []
    hits: list[str] = []
    dns = ScriptedDNS({"media.test": ["127.0.0.1"]})
    async with media_servers(hits) as (port, _), serve_app(create_fake_upstream(received)) as url, \
            aiohttp.ClientSession() as session:
        reference = OpenAIReference(url + "/v1", session=session, model=MODEL,
                                    media=MediaFetcher(resolver=dns, allowed=loopback_only))
        try:
            assert (await reference.answer(with_image(f"http://media.test:{port}/cat.png"))).startswith("echo:")
        finally:
            await reference.close()
    assert hits == ["/cat.png"]
    assert sent_urls(received) == ["data:image/png;base64," + base64.b64encode(IMAGE).decode()]


async def test_a_job_with_a_private_media_url_is_skipped_with_no_outage(tmp_path) -> None:
    """Scored, such a job is skipped in an INFO line naming why; the reference model is not told failing (no
    'reference model failing' WARNING, no failure counted), and a later job is scored."""
    received: list[dict[str, Any]] = []
    lines, sink = log_lines("INFO")
    try:
        async with serve_app(create_fake_upstream(received)) as url, aiohttp.ClientSession() as session:
            reference = CachedReference(OpenAIReference(url + "/v1", session=session, model=MODEL))
            scorer = scorer_with(reference, tmp_path, reference.status)
            chunks = {1: ['{"choices":[{"delta":{"content":"x"}}]}']}
            assert await score(scorer, {1: with_image("http://169.254.169.254/latest/")}, chunks) == {}
            assert await score(scorer, {1: BODY}, chunks)
            await reference.close()
    finally:
        logger.remove(sink)
    assert not [line for line in lines if "reference model failing" in line], lines
    assert any(line.startswith("INFO organic InferenceTask job not scored: a media URL names a private address")
               for line in lines), lines
    assert reference.status.failures == 0 and len(received) == 1
