"""The reference miner holds callers' media within one budget for all requests (``MEDIA_BYTES_IN_FLIGHT``).

The miner fetches each image URL itself and hands the model server a ``data:`` URL, held until the model server's
answer ends. Each request's media were capped (20 MiB), but nothing bounded them across requests: 64 requests in
flight with 20 MiB each held gigabytes. Now every byte is counted as it arrives (these media servers declare no
length: chunked), the request that would pass the budget is the miner's ``503 server_busy`` at once (its model
server never asked), and a request's bytes are given back when its upstream call ends: an answer, an error, or
the caller gone mid-fetch or mid-answer.

Real servers on 127.0.0.1: the miner app (signed requests), a media server (the tests' fetcher takes 127.0.0.1
as the one "public" address, ``loopback_only``, and resolves ``media.test`` with the tests' DNS), and a model
server that holds its answers until the test lets them go, so requests' media are in flight together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from neurons.miner.app import create_miner_app
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.miner.main import build_backend
from neurons.miner.media_urls import MediaFetcher
from shared.settings import MinerSettings, SettingsError, load_settings
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.fake_upstream import MODEL
from tests.helpers import VALIDATOR_KP, keypair, serve_app, wait_until
from tests.integration.test_miner_media_urls import ScriptedDNS, large_picture, loopback_only, with_image

MINER = keypair("//Miner1")
MIB = 1 << 20
BUDGET = 2 * MIB + MIB // 2  # two requests' 1 MiB pictures fit, a third's does not
FAILING_SEED = 500  # the model server answers a request with this seed with a 500


@dataclass
class ModelServer:
    """A model server that answers each chat completion once ``gate`` opens; ``asked``: the requests it got."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    asked: list[dict] = field(default_factory=list)

    def app(self) -> web.Application:
        async def models(_request: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        async def chat(request: web.Request) -> web.Response:
            body = await request.json()
            self.asked.append(body)
            if body.get("seed") == FAILING_SEED:
                return web.json_response({"error": {"message": "boom"}}, status=500)
            await self.gate.wait()
            return web.json_response({"id": "c", "object": "chat.completion", "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a cat"}, "finish_reason": "stop"}]})

        app = web.Application(client_max_size=64 * MIB)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        return app


@contextlib.asynccontextmanager
async def media_server() -> AsyncIterator[int]:
    """A media server on 127.0.0.1 (its port): ``/large.jpg``, 1 MiB in 64 KiB writes with no length declared, and
    ``/stall.jpg``, 256 KiB and then nothing more until the test ends."""
    done = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        await response.write(b"\xff" * (256 << 10))
        await done.wait()
        return response

    app = web.Application()
    app.router.add_get("/large.jpg", large_picture)
    app.router.add_get("/stall.jpg", stall)
    try:
        async with serve_app(app) as url:
            yield int(url.rsplit(":", 1)[1])
    finally:
        done.set()


@contextlib.asynccontextmanager
async def miner(server: ModelServer) -> AsyncIterator[tuple[str, MediaFetcher, int]]:
    """The miner app (openai backend in front of ``server``) with a media budget of ``BUDGET``: its URL, its
    fetcher, and the media server's port."""
    fetcher = MediaFetcher(resolver=ScriptedDNS({"media.test": ["127.0.0.1"]}), allowed=loopback_only,
                           in_flight=BUDGET)
    async with media_server() as port, serve_app(server.app()) as upstream:
        backend = OpenAICompatibleBackend(upstream + "/v1", media=fetcher)
        await backend.start()
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR_KP.ss58_address}))
        try:
            async with serve_app(create_miner_app(backend, verifier)) as url:
                yield url, fetcher, port
        finally:
            server.gate.set()
            await backend.close()


async def chat(url: str, body: dict) -> tuple[int, dict, str | None]:
    """A signed chat request to the miner: its status, its JSON body and its ``Retry-After``."""
    raw = json.dumps(body).encode()
    headers = Signer(VALIDATOR_KP).headers("POST", URL(url + "/v1/chat/completions"), raw, MINER.ss58_address)
    headers |= {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", data=raw, headers=headers,
                                                    timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


def picture(port: int, path: str = "/large.jpg", **fields: object) -> dict:
    return with_image(f"http://media.test:{port}{path}") | {"model": MODEL} | fields


def in_flight(fetcher: MediaFetcher) -> int:
    assert fetcher.budget is not None
    return fetcher.budget.in_flight


async def test_a_request_past_the_budget_is_a_503_at_once_and_the_budget_empties_when_answers_end() -> None:
    server = ModelServer()
    async with miner(server) as (url, fetcher, port):
        held = [asyncio.create_task(chat(url, picture(port))) for _ in range(2)]
        await wait_until(lambda: len(server.asked) == 2, 5.0)
        assert len(server.asked) == 2 and in_flight(fetcher) == 2 * MIB, "two pictures held while answers wait"
        status, answer, retry_after = await chat(url, picture(port))  # a third would pass the budget
        assert status == 503, answer
        assert answer["error"]["code"] == "server_busy" and "media" in answer["error"]["message"], answer
        assert retry_after == "1"
        assert len(server.asked) == 2, "the model server was asked about the refused request"
        assert in_flight(fetcher) == 2 * MIB, "the refused request's bytes were not given back"
        server.gate.set()
        assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
        assert in_flight(fetcher) == 0
        # within the budget, requests in flight together all succeed
        results = await asyncio.gather(*(chat(url, picture(port)) for _ in range(2)))
        assert [s for s, _, _ in results] == [200, 200], results
        assert in_flight(fetcher) == 0 and fetcher.budget is not None and fetcher.budget.peak <= BUDGET


async def test_a_burst_past_the_budget_gets_some_503s_and_never_holds_more_than_it() -> None:
    server = ModelServer()
    async with miner(server) as (url, fetcher, port):
        burst = [asyncio.create_task(chat(url, picture(port))) for _ in range(6)]
        # each either reaches the model server (its picture held) or was refused
        await wait_until(lambda: len(server.asked) + sum(t.done() for t in burst) == len(burst), 5.0)
        assert fetcher.budget is not None and fetcher.budget.peak <= BUDGET, fetcher.budget.peak
        server.gate.set()
        statuses = sorted(s for s, _, _ in await asyncio.gather(*burst))
        assert 200 in statuses and 503 in statuses and set(statuses) == {200, 503}, statuses
        assert statuses.count(200) <= 2, statuses
        assert in_flight(fetcher) == 0


async def test_bytes_are_given_back_when_the_caller_leaves_or_the_model_server_fails() -> None:
    server = ModelServer()
    async with miner(server) as (url, fetcher, port):
        # the caller leaves mid-fetch: the media server sent a quarter MiB and stalls
        leaving = asyncio.create_task(chat(url, picture(port, "/stall.jpg")))
        await wait_until(lambda: in_flight(fetcher) >= 256 << 10, 5.0)
        assert in_flight(fetcher) == 256 << 10, "the bytes read so far (no length declared) are counted"
        leaving.cancel()
        await wait_until(lambda: in_flight(fetcher) == 0, 5.0)
        assert in_flight(fetcher) == 0, "a request whose caller left mid-fetch kept its bytes"
        # the caller leaves while the model server answers
        for stream in (False, True):
            leaving = asyncio.create_task(chat(url, picture(port, stream=stream)))
            await wait_until(lambda: in_flight(fetcher) == MIB, 5.0)
            assert in_flight(fetcher) == MIB
            leaving.cancel()
            await wait_until(lambda: in_flight(fetcher) == 0, 5.0)
            assert in_flight(fetcher) == 0, f"a request whose caller left mid-answer kept its bytes (stream={stream})"
        # the model server fails
        status, answer, _ = await chat(url, picture(port, seed=FAILING_SEED))
        assert status == 502, answer
        assert in_flight(fetcher) == 0
        # and the whole budget is there again
        server.gate.set()
        results = await asyncio.gather(*(chat(url, picture(port)) for _ in range(2)))
        assert [s for s, _, _ in results] == [200, 200], results
        assert in_flight(fetcher) == 0


async def test_the_miner_takes_its_budget_from_media_bytes_in_flight(tmp_path: Path) -> None:
    """``sn1 miner``'s openai backend is built with the budget its env file names, and ``0`` sets none; a negative
    one stops the start with the setting's name."""
    async with serve_app(ModelServer().app()) as upstream:
        env = tmp_path / ".env.miner"
        for value, want in (("3145728", 3 * MIB), ("0", None)):
            env.write_text(f"MINER_BACKEND=openai\nUPSTREAM_URL={upstream}/v1\nMEDIA_BYTES_IN_FLIGHT={value}\n")
            backend = await build_backend(load_settings(MinerSettings, env))
            try:
                budget = backend._media.budget  # type: ignore[attr-defined]
                assert (budget and budget.capacity) == want, value
            finally:
                await backend.close()
    env.write_text("MEDIA_BYTES_IN_FLIGHT=-1\n")
    with pytest.raises(SettingsError, match="MEDIA_BYTES_IN_FLIGHT"):
        load_settings(MinerSettings, env)
