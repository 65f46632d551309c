"""A miner is told its deadline (``x-sn1-deadline``, the seconds it has left) on every chat request, by the API
and by the validator alike, and the reference miner keeps to it: its model server is not asked past it, and a
request to it still running then is dropped (its connection closed), not left generating for a caller who is
gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from neurons.miner.backends.base import BackendError
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from shared.metagraph import write_metagraph_file
from shared.miner_client import MinerClient, make_session
from shared.protocol import DEADLINE_HEADER, MAX_TOLD_DEADLINE, told_deadline
from shared.signing import Signer
from shared.wallet import ensure_wallet
from tests.fake_upstream import MODEL
from tests.helpers import (
    VALIDATOR_KP,
    Script,
    api_with_miners,
    chunk,
    keypair,
    openai_miner,
    post,
    scripted_miner_app,
    serve_app,
    snapshot,
    sse,
    synthetic_jobs,
    wait_until,
)
from tests.ports import free_port

MINER = keypair("//Miner1")
USER = {"role": "user", "content": "hi"}


def answering(delay: float = 0) -> Script:
    return Script([(delay, b"".join(sse(chunk("4", finish="stop"))))])


def told(script: Script) -> list[float]:
    return [float(h[DEADLINE_HEADER]) for h in script.headers]


async def test_the_api_tells_each_miner_its_deadline(tmp_path: Path) -> None:
    """REQUEST_TIMEOUT, less the moment it took to send; a caller's own ``timeout`` is the miners' too."""
    scripts = {1: answering(), 2: answering()}
    async with api_with_miners(tmp_path, scripts, request_timeout=12.0) as api:
        for stream in (False, True):
            status, _, text = await post(api, {"messages": [USER], "stream": stream})
            assert status == 200, text
        status, _, text = await post(api, {"messages": [USER], "timeout": 3.5})
        assert status == 200, text
    for script in scripts.values():
        first, second, short = told(script)
        assert 11.0 < first <= 12.0 and 11.0 < second <= 12.0 and 2.5 < short <= 3.5, told(script)


async def test_the_validator_tells_each_miner_its_deadline_as_the_api_does() -> None:
    """A synthetic job's request carries the header as a caller's does (SYNTHETIC_TIMEOUT's seconds left): a
    miner cannot tell the two apart by it."""
    script = answering()
    async with serve_app(scripted_miner_app(script)) as url, make_session() as session:
        await synthetic_jobs(MinerClient(session, Signer(VALIDATOR_KP)), url, cycles=3)
    assert len(told(script)) == 3 and all(6.0 < s <= 7.0 for s in told(script)), told(script)


async def test_a_request_that_waited_for_a_pooled_connection_is_told_what_is_left() -> None:
    """The header is the time left as the request leaves: one that waited for a connection to a busy miner
    (less than the 2 s after which it is signed again, too) is not told the seconds it spent waiting."""
    script = answering(0.7)
    async with serve_app(scripted_miner_app(script)) as url, make_session(limit_per_host=1) as session:
        client = MinerClient(session, Signer(VALIDATOR_KP))
        miner = snapshot(VALIDATOR_KP.ss58_address, {1: (MINER.ss58_address, url[7:])}).by_uid(1)
        assert miner is not None

        async def ask() -> None:
            deadline = asyncio.get_running_loop().time() + 5.0
            async for _ in client.stream_chat_batches(miner, b'{"messages": []}', deadline):
                pass

        await asyncio.gather(ask(), ask())  # the second waits ~0.7 s for the only connection
    first, second = sorted(told(script), reverse=True)
    assert first > 4.8 and second < 4.5, told(script)


def slow_upstream(asked: list[float], closed: list[float]) -> web.Application:
    """An OpenAI-compatible server that takes a minute to answer: it notes when it is asked, and when the
    asker closes the connection (its handler is cancelled)."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        asked.append(time.monotonic())
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            closed.append(time.monotonic())
            raise
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def signed_chat(url: str, body: dict, deadline: str, miner: str = MINER.ss58_address) -> tuple[int, str]:
    """A caller that tells the miner (of hotkey ``miner``) ``deadline`` and waits far longer (as a caller behind a
    proxy that keeps the connection open does): what the miner answers, and when."""
    raw = json.dumps(body).encode()
    headers = Signer(VALIDATOR_KP).headers("POST", URL(url + "/v1/chat/completions"), raw, miner)
    headers |= {"Content-Type": "application/json", DEADLINE_HEADER: deadline}
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", data=raw, headers=headers,
                                                    timeout=aiohttp.ClientTimeout(total=8)) as r:
        return r.status, await r.text()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_reference_miner_stops_asking_its_model_server_at_the_deadline(stream: bool) -> None:
    asked: list[float] = []
    closed: list[float] = []
    async with openai_miner(slow_upstream(asked, closed), MINER.ss58_address) as url:
        started = time.monotonic()
        # 1.5 s: the 1.3-1.6 s that went by on a slow host before the miner (in this process) asked its model server
        # were a full collection pass of the pytest worker's heap, every test module's objects: frozen after the
        # collection now (tests/conftest.py), as a served process freezes its start-up heap
        status, text = await signed_chat(url, {"messages": [USER], "stream": stream}, "1.5")
        took = time.monotonic() - started
        await wait_until(lambda: bool(closed), 3.0)
        assert status == 504 and json.loads(text)["error"]["code"] == "deadline_exceeded", text
        assert 1.4 < took < 4.5, took
        assert len(asked) == 1 and len(closed) == 1 and closed[0] - started < 4.5, "the upstream's request dropped"
        # a deadline passed already (the request spent it on the way): the model server is not asked at all
        status, text = await signed_chat(url, {"messages": [USER], "stream": stream}, "0")
        assert status == 504 and json.loads(text)["error"]["code"] == "deadline_exceeded", text
        assert len(asked) == 1


async def test_a_fresh_sn1_miner_asks_its_model_server_at_once_on_its_first_request(tmp_path: Path) -> None:
    """``sn1 miner`` in a process of its own, its ``/health`` answering for the first time: its first request, not
    streamed, reaches its model server within 0.5 s (a few ms here, as later ones). Its start-up costs are paid
    before it answers anything (its start-up heap collected and frozen: 0.1-0.3 s on a loaded host); one left to
    the first request (a lazy import, that collection) would be spent of the deadline the caller gave it."""
    asked: list[float] = []
    async with serve_app(slow_upstream(asked, [])) as upstream, aiohttp.ClientSession() as http:
        miner, url, hotkey = await asyncio.to_thread(start_sn1_miner, tmp_path, upstream + "/v1")
        try:
            started = time.monotonic()
            while time.monotonic() - started < 60 and miner.poll() is None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.02)
            for n in (1, 2):
                sent = time.monotonic()
                status, text = await signed_chat(url, {"messages": [USER]}, "1", hotkey)
                assert status == 504 and len(asked) == n, (status, text, (tmp_path / "miner.err").read_text()[-2000:])
                assert asked[-1] - sent < 0.5, f"request {n} reached the model server after {asked[-1] - sent:.2f} s"
        finally:
            miner.terminate()
            await asyncio.to_thread(miner.wait, 20)


def start_sn1_miner(directory: Path, upstream: str) -> tuple[subprocess.Popen, str, str]:
    """``sn1 miner`` (its openai backend before ``upstream``) with a wallet of its own in ``directory``, taking
    ``VALIDATOR_KP``'s requests: the process, its base URL and its hotkey."""
    wallets = directory / "wallets"
    hotkey = ensure_wallet("miner", "default", wallets).ss58_address
    port = free_port()
    write_metagraph_file(directory / "metagraph.json", snapshot(VALIDATOR_KP.ss58_address,
                                                                {1: (hotkey, f"127.0.0.1:{port}")}))
    env = os.environ | {"WALLET_NAME": "miner", "WALLET_HOTKEY": "default", "WALLET_PATH": str(wallets),
                        "METAGRAPH_FILE": str(directory / "metagraph.json"), "NETUID": "1", "MINER_HOST": "127.0.0.1",
                        "MINER_PORT": str(port), "MINER_BACKEND": "openai", "UPSTREAM_URL": upstream}
    with (directory / "miner.err").open("w") as err:
        miner = subprocess.Popen([sys.executable, "-m", "shared.cli", "miner"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=err)
    return miner, f"http://127.0.0.1:{port}", hotkey


def test_a_deadline_that_makes_no_sense_is_no_deadline() -> None:
    """The header is not signed: a value that is no finite number is read as no deadline (the miner answers as
    it would without one, not a 400), one past is 0 (the model server is not asked), a huge one is capped."""
    assert [told_deadline(v) for v in (None, "soon", "nan", "-inf", "inf", "")] == [None] * 6
    assert [told_deadline(v) for v in ("-3", "0", "29.997", "1e9")] == [0.0, 0.0, 29.997, MAX_TOLD_DEADLINE]


async def test_the_openai_backend_gives_its_upstream_request_no_longer_than_the_deadline() -> None:
    """The backend's own timeout (``UPSTREAM_TIMEOUT``, 120 s) is cut to the caller's deadline: its request to
    the model server ends there, whoever uses the backend, with the deadline's 504 (not the miner's 502)."""
    asked: list[float] = []
    closed: list[float] = []
    async with serve_app(slow_upstream(asked, closed)) as up:
        backend = OpenAICompatibleBackend(up + "/v1")
        await backend.start()
        body = {"messages": [USER]}
        try:
            for stream in (False, True):
                started = asyncio.get_running_loop().time()
                with pytest.raises(BackendError) as e:
                    if stream:
                        await anext(backend.stream_raw(body, deadline=started + 0.4))
                    else:
                        await backend.complete_raw(body, deadline=started + 0.4)
                took = asyncio.get_running_loop().time() - started
                assert (e.value.status, e.value.code) == (504, "deadline_exceeded") and 0.35 < took < 1.5, (e.value, took)
                # a stream with no chunk yet: the model never started answering (a queue, a long prompt), which an
                # operator tells from an answer generated too slowly (it said "before the model server finished")
                assert str(e.value).endswith("before the model server's first chunk" if stream
                                             else "before the model server finished"), e.value
        finally:
            await backend.close()
    assert len(asked) == 2
