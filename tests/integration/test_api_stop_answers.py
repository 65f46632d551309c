"""What a caller gets when the API process answering it stops (SIGTERM: a restart, a deploy): a real ``sn1 api``
process in front of a scripted miner on 127.0.0.1, stopped while requests are in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.helpers import Script, chunk, keypair, scripted_miner_app, serve_app, wait_until
from tests.keys.procs import ADMIN, ApiProcess, prepare, start_api, wait_ready

MODEL = "sn1/deterministic"
MESSAGES = [{"role": "user", "content": "Take your time."}]


@dataclass
class Stopping:
    """A real API process with one scripted miner (uid 1), and a key for it."""

    api: ApiProcess
    miner: Script
    head: dict[str, str]


@contextlib.asynccontextmanager
async def api_before(tmp_path: Path, miner: Script) -> AsyncIterator[Stopping]:
    async with serve_app(scripted_miner_app(miner)) as served:
        env = prepare(tmp_path, {1: (keypair("//Miner1").ss58_address, served.removeprefix("http://"))})
        api = start_api(tmp_path, env, store_url=f"sqlite:///{tmp_path / 'api.db'}")
        try:
            await asyncio.to_thread(wait_ready, [api])
            async with aiohttp.ClientSession() as http, http.post(
                    f"{api.url}/api_management/create-api-key/?rate_limit=1000", headers={"admin-key": ADMIN}) as r:
                assert r.status == 200, await r.text()
                key = (await r.json())["api_key"]
            yield Stopping(api, miner, {"Authorization": f"Bearer {key}"})
        finally:
            api.kill()


async def test_requests_whose_miner_had_not_answered_get_a_503_to_retry_when_the_api_stops(tmp_path: Path) -> None:
    """SIGTERM while a chat completion (plain and streamed), a legacy completion and a Responses request wait on a
    miner that has sent nothing: each got an empty reply (the connection closed with no response, curl's exit 52)
    once the 5 s grace was over. Nothing had been sent, so each now gets a 503 ``server_shutting_down`` with
    ``Retry-After``, which the OpenAI SDKs retry (on another API process, or this one restarted)."""
    hanging = Script([(60.0, chunk("late").encode())])
    async with api_before(tmp_path, hanging) as run, aiohttp.ClientSession() as http:
        asks = [("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
                ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}),
                ("/v1/completions", {"model": MODEL, "prompt": "Take your time."}),
                ("/v1/responses", {"model": MODEL, "input": "Take your time."})]

        async def ask(path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
            async with http.post(run.api.url + path, json=body, headers=run.head,
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                return r.status, dict(r.headers), await r.read()

        answers = [asyncio.create_task(ask(path, body)) for path, body in asks]
        assert await wait_until(lambda: hanging.active == len(asks), 10) < 10, "the miner was not asked by them all"
        started = time.monotonic()
        run.api.proc.send_signal(signal.SIGTERM)
        got = await asyncio.gather(*answers)
        took = time.monotonic() - started
    for (path, _), (status, headers, body) in zip(asks, got, strict=True):
        assert status == 503, (path, status, body)
        assert headers["Retry-After"] == "1" and headers["Content-Type"].startswith("application/json"), headers
        error = json.loads(body)["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
        assert "x-request-id" in {k.lower() for k in headers}, headers
    assert took < 8, f"answered {took:.1f} s after the signal: at the grace's end (5 s), not at the cut (10 s)"
    log = run.api.log.read_text()
    assert log.count(" status=shut_down ") == len(asks), log[-3000:]


async def test_a_stream_that_had_begun_ends_without_done_when_the_api_stops(tmp_path: Path) -> None:
    """A stream whose first chunks went out cannot be answered a 503 any more: it runs on through the grace, then
    is cut as the README says (its connection closes with no ``[DONE]``), its line ``status=shut_down``."""
    trickling = Script([(0.2, f"data: {chunk(f'word{i} ')}\n\n".encode()) for i in range(150)]
                       + [(0, b"data: [DONE]\n\n")])
    async with api_before(tmp_path, trickling) as run, aiohttp.ClientSession() as http:
        seen = b""
        ended_with: Exception | None = None
        async with http.post(run.api.url + "/v1/chat/completions", headers=run.head,
                             json={"model": MODEL, "messages": MESSAGES, "stream": True},
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
            assert r.status == 200
            while b"word1 " not in seen:
                seen += await r.content.readany()
            run.api.proc.send_signal(signal.SIGTERM)
            try:
                async for part in r.content.iter_any():
                    seen += part
            except aiohttp.ClientPayloadError as e:
                ended_with = e
    assert ended_with is not None, "the stream ended as if complete"
    assert b"word5 " in seen, "the stream did not run on through the grace"
    assert b"[DONE]" not in seen and b'"error"' not in seen, seen[-500:]
    assert run.api.log.read_text().count(" status=shut_down ") == 1
