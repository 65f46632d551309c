"""A miner that answers with a redirect must not steer the API (or the validator) to another address.

A miner is untrusted: were its ``307 Location: http://10.0.0.5/...`` followed, the API would send the
caller's request, signed, to whatever the miner named (an operator's private model server, a cloud
metadata address) and relay that server's answer to the caller: a server-side request forgery with the
answer handed back. A 3xx from a miner is its failure, like any other status it should not send.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from api.app import create_api_app
from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.availability import poll_one
from shared.metagraph import Neuron
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    build_api_context,
    chunk,
    keypair,
    log_lines,
    scripted_miner_app,
    serve_app,
    snapshot,
    sse,
)

SECRET = "INTERNAL-ONLY-ANSWER"


def redirecting_app(target: str, status: int, hits: list[str]) -> web.Application:
    """A miner whose every answer is ``status`` to ``target`` (its chat and its availability)."""

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        await request.read()
        return web.Response(status=status, headers={"Location": target + request.path})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/availability", handler)
    return app


@contextlib.asynccontextmanager
async def api_behind(tmp_path: Path, miner_url: str) -> AsyncIterator[tuple[str, str]]:
    """The API whose only miner (uid 1) is at ``miner_url``: its URL and a key."""
    miners = {1: (keypair("//Miner1").ss58_address, miner_url.removeprefix("http://"))}
    ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address, miners), VALIDATOR_KP)
    try:
        secret, _ = await ctx.store.create_key(1000)
        async with serve_app(create_api_app(ctx, run_background=False)) as url:
            yield url, secret
    finally:
        await ctx.client.session.close()


async def chat(url: str, key: str, *, stream: bool) -> tuple[int, str]:
    body: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", json=body,
                                                    headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.text()


async def test_a_miner_redirect_is_not_followed_to_the_address_it_names(tmp_path: Path) -> None:
    internal = Script(steps=[(0, s) for s in sse(chunk(SECRET), chunk(finish="stop"))])
    hits: list[str] = []
    async with serve_app(scripted_miner_app(internal)) as internal_url:
        for status in (307, 308, 302, 303):
            async with serve_app(redirecting_app(internal_url, status, hits)) as miner_url, \
                    api_behind(tmp_path / str(status), miner_url) as (url, key):
                for stream in (False, True):
                    code, text = await chat(url, key, stream=stream)
                    assert SECRET not in text, (status, stream, code, text)
                    assert code == 502, (status, stream, code, text)
    assert hits, "the redirecting miner was never asked"
    assert internal.calls == 0, f"the address a miner named was called {internal.calls} time(s)"


async def test_a_miner_redirect_is_not_followed_by_an_availability_poll(tmp_path: Path) -> None:
    """The validator's availability poll (and any signed JSON call) goes through ``post_json``: same rule."""
    honest_kp = keypair("//Miner2")
    verifier = RequestVerifier(honest_kp.ss58_address, Authorizer(lambda: {VALIDATOR_KP.ss58_address}))
    hits: list[str] = []
    async with serve_app(create_miner_app(DeterministicBackend(), verifier)) as honest_url, \
            serve_app(redirecting_app(honest_url, 307, hits)) as miner_url:
        client = MinerClient(make_session(), Signer(VALIDATOR_KP))
        try:
            status, data = await client.post_json(miner_url, "/availability", {}, honest_kp.ss58_address, timeout=5)
        finally:
            await client.session.close()
    assert hits == ["/availability"]
    assert status == 307, (status, data)


async def test_a_redirecting_miner_is_told_as_one(tmp_path: Path) -> None:
    """An honest miner behind a redirect (an HTTP-to-HTTPS one, a moved path) fails every request: the line that
    tells of it says it was a redirect, where to, and that it is never followed, not a bare ``HTTP 307: ``; the
    access line's kind is ``http_3xx``; the validator's availability poll says so too."""
    hits: list[str] = []
    lines, sink = log_lines("DEBUG")
    try:
        async with serve_app(redirecting_app("https://miner.example:8443", 301, hits)) as miner_url:
            async with api_behind(tmp_path, miner_url) as (url, key):
                code, _ = await chat(url, key, stream=False)
            client = MinerClient(make_session(), Signer(VALIDATOR_KP))
            failures: dict[int, str] = {}
            try:
                neuron = Neuron(uid=1, hotkey=keypair("//Miner1").ss58_address, axon=miner_url.removeprefix("http://"))
                assert await poll_one(client, neuron, 5.0, failures=failures) is None
            finally:
                await client.session.close()
    finally:
        logger.remove(sink)
    assert code == 502 and hits
    told = [line for line in lines if "uid=1 failed: HTTP 301" in line]
    assert told and all("a redirect to https://miner.example:8443/v1/chat/completions, never followed" in line
                        for line in told), lines
    assert any("failed=1:http_3xx" in line for line in lines), lines
    assert "a redirect, never followed: a miner must answer at the address its axon publishes" in failures[1]
