"""The validator's reference model and callers' media: bounded as the miner's are, never a private address.

An organic request's image URLs are fetched by the validator itself before its reference model (``REFERENCE_LLM_URL``)
re-answers the request to score the miners (``media_urls``, as a miner fetches them). Each request's media were
capped (20 MiB, 15 s, public addresses only), but nothing bounded them across jobs, and the bytes counted were given
back as soon as they were fetched, though held until the reference model answered. Now the validator has the miner's
budget (``MEDIA_BYTES_IN_FLIGHT``), held until the reference model's answer ends; past it the job is not scored.

Real servers on 127.0.0.1: a media server, a "private" one on 127.0.0.2 (the tests' fetcher takes 127.0.0.1 as the
one public address, ``loopback_only``, and resolves names with the tests' DNS), and a reference model server that
holds its answers until the test lets them go.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from neurons.miner.media_urls import MediaFetcher
from neurons.validator.main import build_reference
from neurons.validator.reference import CachedReference, OpenAIReference
from shared.settings import ValidatorSettings, load_settings
from tests.fake_upstream import MODEL
from tests.helpers import log_lines, serve_app, wait_until
from tests.integration.test_content_parts import PARTS, text_only_server
from tests.integration.test_miner_media_budget import ModelServer
from tests.integration.test_miner_media_urls import ScriptedDNS, loopback_only, media_servers, with_image
from tests.validator.test_tool_rewards import score, scorer_with

MIB = 1 << 20
ANSWER = {1: ['{"choices":[{"delta":{"content":"a cat"}}]}']}  # what the miner streamed


@contextlib.asynccontextmanager
async def endless_media() -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """A media server on 127.0.0.1 whose ``/huge.jpg`` never ends (64 KiB writes, no length): its port, and what
    it saw (``sent``: bytes written; ``ended``: set when the client hung up)."""
    seen: dict[str, Any] = {"sent": 0, "ended": asyncio.Event()}

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"\xff" * (64 << 10))
                seen["sent"] += 64 << 10
        except (ConnectionError, RuntimeError):  # the client hung up (aiohttp's reset, or a closed transport)
            return response
        finally:
            seen["ended"].set()

    app = web.Application()
    app.router.add_get("/huge.jpg", huge)
    async with serve_app(app) as url:
        yield int(url.rsplit(":", 1)[1]), seen


def reference_with(url: str, session: aiohttp.ClientSession, fetcher: MediaFetcher) -> CachedReference:
    return CachedReference(OpenAIReference(url + "/v1", session=session, model=MODEL, media=fetcher))


def fetcher(in_flight: int = 0, **names: list[str]) -> MediaFetcher:
    dns = ScriptedDNS({"media.test": ["127.0.0.1"], **{k.replace("_", "."): v for k, v in names.items()}})
    return MediaFetcher(resolver=dns, allowed=loopback_only, in_flight=in_flight, owner="validator")


async def test_a_huge_media_url_is_read_no_further_than_the_cap(tmp_path: Path) -> None:
    """A URL whose body never ends: the validator stops at its cap (here the budget, 2 MiB), hangs up, never asks
    the reference model, and the job is not scored (an INFO line, no reference outage)."""
    server = ModelServer()
    server.gate.set()
    lines, sink = log_lines("INFO")
    media = fetcher(in_flight=2 * MIB)
    try:
        async with endless_media() as (port, seen), serve_app(server.app()) as url, \
                aiohttp.ClientSession() as session:
            reference = reference_with(url, session, media)
            scorer = scorer_with(reference, tmp_path, reference.status)
            assert await score(scorer, {1: with_image(f"http://media.test:{port}/huge.jpg")}, ANSWER) == {}
            await asyncio.wait_for(seen["ended"].wait(), 5.0)
            await reference.close()
    finally:
        logger.remove(sink)
    assert server.asked == [], "the reference model was asked with a cut picture"
    assert media.budget is not None and media.budget.peak <= 2 * MIB and media.budget.in_flight == 0
    assert any(line.startswith("INFO organic InferenceTask job not scored: the request's media are larger than")
               for line in lines), lines
    assert reference.status.failures == 0


async def test_private_targets_are_never_reached_from_an_organic_payload(tmp_path: Path) -> None:
    """127.0.0.2 stands for the validator's private network (a server there holds a secret): named by address, by
    a name that resolves to it, or through a public server's redirect, it is never asked; nor is 10.x or the
    metadata address tried. Each such job is not scored, and the reference model is never asked."""
    server = ModelServer()
    server.gate.set()
    hits: list[str] = []
    async with media_servers(hits) as (public, inner), serve_app(server.app()) as url, \
            aiohttp.ClientSession() as session:
        media = fetcher(inner_test=["127.0.0.2"], rebind_test=["127.0.0.1", "127.0.0.2"])
        reference = reference_with(url, session, media)
        scorer = scorer_with(reference, tmp_path, reference.status)
        secret = f"http://127.0.0.2:{inner}/secret"
        for private in (secret, f"http://inner.test:{inner}/secret", f"http://media.test:{public}/go?to={secret}",
                        f"http://rebind.test:{inner}/secret", "http://10.0.0.5/internal.png",
                        "http://169.254.169.254/latest/meta-data/"):
            assert await score(scorer, {1: with_image(private)}, ANSWER) == {}, private
        await reference.close()
    assert "/secret" not in hits, hits
    assert server.asked == [] and reference.status.failures == 0


async def test_media_are_held_within_the_validators_budget_until_the_reference_answers(tmp_path: Path) -> None:
    """Two organic jobs at once with a 1 MiB picture each, a budget of 1.5 MiB: the first's bytes count until the
    reference model's answer ends (they were given back as soon as fetched), the second is not scored, with an
    INFO line saying the budget is full, and once the answer ends the whole budget is there again."""
    server = ModelServer()
    lines, sink = log_lines("INFO")
    hits: list[str] = []
    try:
        async with media_servers(hits) as (port, _), serve_app(server.app()) as url, \
                aiohttp.ClientSession() as session:
            media = fetcher(in_flight=MIB + MIB // 2)
            reference = reference_with(url, session, media)
            scorer = scorer_with(reference, tmp_path, reference.status)
            picture = with_image(f"http://media.test:{port}/large.jpg")
            first = asyncio.create_task(score(scorer, {1: picture | {"seed": 1}}, ANSWER))
            await wait_until(lambda: len(server.asked) == 1, 5.0)
            assert media.budget is not None and media.budget.in_flight == MIB, "the picture held is not counted"
            assert await score(scorer, {1: picture | {"seed": 2}}, ANSWER) == {}
            assert len(server.asked) == 1, "the reference model was asked past the budget"
            server.gate.set()
            assert await first, "the first job was not scored"
            assert media.budget.in_flight == 0
            assert await score(scorer, {1: picture | {"seed": 3}}, ANSWER), "the budget did not empty"
            await reference.close()
    finally:
        logger.remove(sink)
    assert any(line.startswith("INFO organic InferenceTask job not scored: callers' media fill this validator's "
                               "budget") for line in lines), lines
    assert reference.status.failures == 0


async def test_the_validator_takes_its_budget_from_media_bytes_in_flight(tmp_path: Path) -> None:
    """``sn1 validator``'s reference model is built with the budget its env file names; ``0`` sets none."""
    env = tmp_path / ".env.validator"
    async with aiohttp.ClientSession() as session:
        for value, want in (("3145728", 3 * MIB), ("0", None), (None, 256 * MIB)):
            setting = "" if value is None else f"MEDIA_BYTES_IN_FLIGHT={value}\n"
            env.write_text(f"REFERENCE_LLM_URL=http://127.0.0.1:9/v1\n{setting}")
            reference = build_reference(load_settings(ValidatorSettings, env), session)
            budget = reference.inner._media.budget  # type: ignore[attr-defined]
            assert (budget and budget.capacity) == want, value
            await reference.close()


async def test_a_reference_model_that_cannot_read_an_image_leaves_the_job_unscored_with_no_outage(
        tmp_path: Path) -> None:
    """A text-only reference model (llama.cpp's server without an mmproj answers a 500) given a caller's image: the
    job is not scored, in an INFO line, and the reference model is not told failing (any caller could otherwise
    have it look down); a text job is scored by it as before."""
    lines, sink = log_lines("INFO")
    try:
        async with serve_app(text_only_server("llama.cpp")) as url, aiohttp.ClientSession() as session:
            reference = reference_with(url, session, fetcher())
            scorer = scorer_with(reference, tmp_path, reference.status)
            image = {"messages": [{"role": "user", "content": PARTS[:2]}]}
            assert await score(scorer, {1: image}, ANSWER) == {}
            assert await score(scorer, {1: {"messages": [{"role": "user", "content": PARTS[:1]}]}}, ANSWER)
            await reference.close()
    finally:
        logger.remove(sink)
    assert any(line.startswith("INFO organic InferenceTask job not scored: the reference model cannot read a part")
               for line in lines), lines
    assert not [line for line in lines if "reference model failing" in line], lines
    assert reference.status.failures == 0
