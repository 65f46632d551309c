"""A request that waits for a pooled connection leaves with a fresh signature.

A signature is good for ``max_age`` (10 s in the SDK). With the pool saturated (``limit_per_host``
requests to one slow miner), a request signed before the wait reached the miner stale: refused with a
401, and the miner scored 0 for the node's own congestion."""

from __future__ import annotations

import asyncio

from aiohttp import web

from shared.errors import ApiError
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import VALIDATOR_KP, keypair, serve_app

MINER = keypair("//Miner1")
MAX_AGE = 1.0


def slow_miner(hold: float) -> web.Application:
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: (), [VALIDATOR_KP.ss58_address]),
                               max_age=MAX_AGE)

    async def answer(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verifier.verify(request.headers, raw, method=request.method, path=request.raw_path)
        except ApiError as e:
            return web.json_response({"error": {"message": e.message}}, status=e.status)
        await asyncio.sleep(hold)  # holds the only pooled connection a while
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/work", answer)
    return app


async def test_a_request_that_waited_for_a_pooled_connection_is_signed_again() -> None:
    async with serve_app(slow_miner(hold=MAX_AGE * 1.5)) as url, make_session(limit_per_host=1) as session:
        session.connector.resign_after = 0.2  # type: ignore[union-attr]
        client = MinerClient(session, Signer(VALIDATOR_KP))
        first = asyncio.create_task(client.post_json(url, "/work", {"n": 1}, MINER.ss58_address, timeout=10))
        await asyncio.sleep(0.1)  # the first holds the connection; the second waits ~1.5 s for it
        second = await client.post_json(url, "/work", {"n": 2}, MINER.ss58_address, timeout=10)
        assert (await first)[0] == 200
        assert second[0] == 200, second
        assert client._pending == {}, "nothing left to sign again once sent"
