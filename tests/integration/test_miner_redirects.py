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

from api.app import create_api_app
from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from shared.signing import Authorizer, RequestVerifier
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    build_api_context,
    chunk,
    keypair,
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
    from shared.miner_client import MinerClient, make_session
    from shared.signing import Signer

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
