"""What callers can make a miner's model-server watch (``neurons.miner.backends.server_watch``) do: a hosted model
server (OpenRouter, Together, a LiteLLM gateway) that rate-limits answers 429 to the chats past its limit, and to a
``/models`` listing asked meanwhile. Callers flooding the miner drew those 429s: each woke a listing (one a second, each
spending the same rate limit) and dropped the excuse of the chats it had just answered, so two 429 listings took a
server that was there, answering, as down: the miner withdrew itself (every request a 503, its models advertised by no
one) until the next listing got through. A real miner in front of a real fake model server on 127.0.0.1, called with
the validator's own signed client."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fake_upstream import MODEL, create_fake_upstream
from tests.helpers import serve_app
from tests.integration.test_miner_model_server_down import advertised
from tests.integration.test_miner_model_server_health import chat, miner_before

RATE_LIMITED = {"error": {"message": "Rate limit exceeded: free-models-per-min.", "type": "rate_limit_error",
                          "code": 429}}


def rate_limited_server(state: dict[str, Any]) -> web.Application:
    """The fake model server, answering every request (chats and ``/models``) 429 while ``state["limited"]``; the
    listings asked counted in ``state["listings"]``."""
    server = create_fake_upstream([])

    @web.middleware
    async def limit(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/models"):
            state["listings"] += 1
        if state["limited"]:
            return web.json_response(RATE_LIMITED, status=429, headers={"Retry-After": "1"})
        return await handler(request)

    server.middlewares.append(limit)
    return server


async def test_a_flood_of_rate_limited_chats_neither_withdraws_the_miner_nor_wakes_its_listings() -> None:
    state: dict[str, Any] = {"limited": False, "listings": 0}
    async with serve_app(rate_limited_server(state)) as up, \
            miner_before(up + "/v1", down_probe=0.2) as (url, _):
        assert await chat(url) and await advertised(url) == [MODEL]  # it answers: up
        state["limited"], listed = True, state["listings"]
        refused = await asyncio.gather(*(chat(url) for _ in range(20)))  # the callers' flood: every one a 429
        assert not any(refused)
        await asyncio.sleep(2.5)  # where the listings the 429s woke took it as down (the second after a second)
        assert await advertised(url) == [MODEL], "a server answering 429 is there: the miner stays advertised"
        assert state["listings"] == listed, "no listing woken: each would spend the rate limit the callers hit"
        state["limited"] = False
        assert await chat(url)
