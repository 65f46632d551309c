"""What is scored when a request's race outlives its answer: stored at a graceful shutdown (the miners
still answering are stopped and left out), and settled once however the request ended."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp import web

from api.app import create_api_app
from api.scoring_outbox import OutboxForwarder
from shared.store.outbox import SQLiteOutbox
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    api_with_miners,
    build_api_context,
    chunk,
    keypair,
    post,
    scripted_miner_app,
    serve_app,
    snapshot,
    sse,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def late(seconds: float) -> Script:
    return Script([(seconds if i == 0 else 0, d) for i, d in enumerate(sse(chunk("late"), chunk(finish="stop")))])


async def test_a_graceful_shutdown_stores_the_payload_of_an_answered_request(tmp_path: Path) -> None:
    """k = 2: one miner answers at once, the other is still at it when SIGTERM comes. The payload was
    waiting for it, and the shutdown cancelled the wait: nothing was stored, though the caller had its answer."""
    fast = Script([(0, d) for d in sse(chunk("hello"), chunk(finish="stop"))])
    async with contextlib.AsyncExitStack() as stack:
        miners = {}
        for uid, script in ((1, fast), (2, late(3.0))):
            url = await stack.enter_async_context(serve_app(scripted_miner_app(script)))
            miners[uid] = (keypair(f"//Miner{uid}").ss58_address, url.removeprefix("http://"))
        ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address, miners), VALIDATOR_KP, default_k=2)
        stack.push_async_callback(ctx.client.session.close)
        box = SQLiteOutbox(tmp_path / "api.db")
        ctx.attach_forwarder(OutboxForwarder(box, ctx.client, "http://127.0.0.1:9", VALIDATOR_KP.ss58_address))
        secret, _ = await ctx.store.create_key(1000)
        runner = web.AppRunner(create_api_app(ctx, run_background=True), shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": MESSAGES},
                headers={"Authorization": f"Bearer {secret}"}) as r:
            assert r.status == 200
        assert ctx.background, "the payload waits for the slow miner"
        await asyncio.wait_for(runner.cleanup(), 10)  # what SIGTERM does (serve_until_signal)
    check = SQLiteOutbox(tmp_path / "api.db")
    (item,) = await check.peek(10)
    assert item.payload["uids"] == [1] and item.payload["winner"] == 1, "the stopped miner is left out, not a 0"
    await check.close()


async def test_a_failed_session_attempt_is_scored_once_when_the_caller_leaves(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: Script([], status=500), 2: late(3.0)}) as api:
        got: list[dict] = []
        api.ctx.payload_sinks.append(got.append)
        for _ in range(50):  # until the session pins the failing miner
            _, _, text = await post(api, {"model": "default", "failover": True}, path="/v1/sessions")
            if '"uid":1' in text.replace(" ", ""):
                break
        with contextlib.suppress(asyncio.TimeoutError, aiohttp.ClientError):
            await post(api, {"messages": MESSAGES}, timeout=1.0)  # leaves while the replacement answers
        await asyncio.sleep(0.5)
    failed = [p for p in got if 1 in p["uids"]]
    assert [p["kind"] for p in failed] == ["session"], failed
