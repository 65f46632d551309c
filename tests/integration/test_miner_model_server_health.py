"""A miner whose model server fails it says so in ``/health``'s ``problems``, with why.

It said ``ok`` with no problem while its model server was down (gone after the start: the models it listed at
start stayed advertised, and every request was a 502, a 0), while the server refused its key, and, for
``UPSTREAM_MODELS`` naming a model the server does not list, it said "the model server lists none, or has not
answered yet" of a server that had answered with a list. A real miner in front of a real model server on 127.0.0.1,
called with the validator's own signed client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from loguru import logger
from yarl import URL

from neurons.miner.app import create_miner_app
from neurons.miner.backends import server_watch
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from shared.jsonutil import dumpb
from shared.metagraph import Neuron
from shared.miner_client import MinerClient, MinerError, make_session
from shared.protocol import DEADLINE_HEADER
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.fake_upstream import MODEL, create_fake_upstream
from tests.helpers import keypair, log_lines, serve_app
from tests.ports import free_port

VALIDATOR, MINER = keypair("//Validator"), keypair("//Miner1")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "seed": 7, "stream": False, "task": "InferenceTask"}


@contextlib.asynccontextmanager
async def miner_before(upstream_url: str, **backend_options) -> AsyncIterator[tuple[str, OpenAICompatibleBackend]]:
    """The reference miner (openai backend) in front of ``upstream_url``: its URL and its backend."""
    backend = OpenAICompatibleBackend(upstream_url, **backend_options)
    await backend.start()
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    try:
        async with serve_app(create_miner_app(backend, verifier)) as url:
            yield url, backend
    finally:
        await backend.close()


def model_server(chat: Handler) -> web.Application:
    """A model server listing ``MODEL`` whose chat completions ``chat`` answers."""
    server = web.Application()
    server.router.add_get("/v1/models", lambda _r: web.json_response({"object": "list", "data": [{"id": MODEL}]}))
    server.router.add_post("/v1/chat/completions", chat)
    return server


async def slow(request: web.Request) -> web.Response:
    """A model server's chat slower than any caller here waits."""
    await request.read()
    await asyncio.sleep(5)
    return web.json_response({})


async def problems(url: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "ok"
        return body["problems"]


async def chat(url: str, seconds: float = 10) -> bool:
    """One signed chat request as the validator sends it (its deadline ``seconds`` away): whether it was answered."""
    session = make_session()
    try:
        client = MinerClient(session, Signer(VALIDATOR))
        neuron = Neuron(uid=1, hotkey=MINER.ss58_address, axon=url.removeprefix("http://"))
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            return bool([e async for e in client.stream_chat(neuron, dumpb(CHAT), deadline, stream=False)])
        except MinerError:
            return False
    finally:
        await session.close()


async def test_a_model_server_gone_after_the_start_is_a_problem_until_it_answers_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_watch, "CONFIRM_S", 5.0)  # its own listings do not take it down during the chats
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}/v1"
    async with contextlib.AsyncExitStack() as st:
        up = await st.enter_async_context(contextlib.AsyncExitStack())
        await up.enter_async_context(serve_app(create_fake_upstream([]), port=port))
        url, backend = await st.enter_async_context(miner_before(upstream_url))
        assert await chat(url) and await problems(url) == []
        await up.aclose()  # the model server stops (crashed, out of memory, restarted by hand)

        assert not await chat(url)
        assert not await chat(url)
        assert await problems(url) == [], "one or two failures are no standing problem"
        assert not await chat(url)
        [failing] = await problems(url)
        assert failing.startswith("the model server failed the last 3 chat requests in a row (since ")
        assert failing.endswith(f"cannot connect to the model server at 127.0.0.1:{port} (Connection refused): is "
                                "it running, and UPSTREAM_URL right?"), failing
        await backend.refresh_models()  # its listing fails too (twice: the chat had it listed): nothing is advertised
        await backend.refresh_models()
        assert (await problems(url))[0].startswith(
            f"could not list upstream models at {upstream_url}: cannot connect to the model server at 127.0.0.1:{port} "
            "(Connection refused): is it running, and UPSTREAM_URL right?; no model is served until its model list is "
            "read (asked every 5s), since ")

        await st.enter_async_context(serve_app(create_fake_upstream([]), port=port))  # back
        await backend.refresh_models()
        assert len(await problems(url)) == 1, "the listing answers: only the streak is left"
        assert await chat(url) and await problems(url) == []


@pytest.mark.parametrize("status", [401, 500])
async def test_a_model_server_that_fails_every_request_is_named_with_its_words(status: int) -> None:
    """A wrong ``UPSTREAM_API_KEY`` (a 401 for every chat) or a broken server: a 502 each, and ``/health`` said
    nothing. Its status is given, not its words (they may quote a caller's prompt, and anyone reaching the port
    reads ``/health``): they are in the WARNING lines."""
    server = model_server(lambda _r: web.json_response(
        {"error": {"message": "no good (sk-secret-key-1234)", "type": "x"}}, status=status))
    async with serve_app(server) as up, miner_before(up + "/v1", api_key="sk-secret-key-1234") as (url, _):
        for _ in range(3):
            assert not await chat(url)
        [failing] = await problems(url)
    assert failing.endswith(f"the latest: upstream HTTP {status} (its words are in the WARNING lines)"), failing


async def test_upstream_models_the_server_does_not_list_are_named() -> None:
    """``UPSTREAM_MODELS=Qwen/Qwen2.5-7B-Instruct`` before a server listing ``fake/llm-1`` (Ollama names its models
    ``qwen2.5:7b``): ``/health`` said "lists none, or has not answered yet" of a server that answered, and then not
    how to serve the model under the name callers ask for (the operator's likely intent)."""
    async with serve_app(create_fake_upstream([])) as up, \
            miner_before(up + "/v1", serve_models=["Qwen/Qwen2.5-7B-Instruct"]) as (url, _):
        assert await problems(url) == [
            f"UPSTREAM_MODELS names Qwen/Qwen2.5-7B-Instruct that the model server at {up}/v1 does not list: not "
            f"served (GET {up}/v1/models lists the names it takes); to serve a model it lists under that name: "
            f"UPSTREAM_MODEL_ALIASES=Qwen/Qwen2.5-7B-Instruct={MODEL}"]


async def test_a_model_server_that_lists_no_model_says_so() -> None:
    async with serve_app(create_fake_upstream([], models=[])) as up, miner_before(up + "/v1") as (url, _):
        assert await problems(url) == [f"the upstream at {up}/v1 lists no model yet: nothing is served until it "
                                       "does (Ollama: pull one with ollama pull)"]


async def test_a_model_server_that_lists_no_chat_model_says_so() -> None:
    """Ollama with only an embedding model pulled: nothing was served, with no WARNING, and ``/health`` said "lists
    none, or has not answered yet" of a server that listed two models."""
    lines, sink = log_lines()
    try:
        async with serve_app(create_fake_upstream([], models=["nomic-embed-text", "whisper-1"])) as up, \
                miner_before(up + "/v1") as (url, _):
            said = (f"the upstream at {up}/v1 lists no chat model (only nomic-embed-text, whisper-1): nothing is served "
                    "(a chat model it lists under such a name is served when UPSTREAM_MODELS names it)")
            assert await problems(url) == [said]
    finally:
        logger.remove(sink)
    assert f"WARNING {said}" in lines


async def test_a_model_server_slower_than_callers_wait_is_named() -> None:
    """Every answer past the caller's deadline (``x-sn1-deadline``): a 504 each, a 0 each, and ``/health`` said
    nothing."""
    server = model_server(slow)
    async with serve_app(server) as up, miner_before(up + "/v1") as (url, _):
        for _ in range(3):
            assert not await chat(url, seconds=0.5)
        await asyncio.sleep(0.2)  # the miner's line is written as its deadline passes, the caller gone already
        [failing] = await problems(url)
    # the caller's close and the miner's own 504 come at the same moment: either one's words
    assert failing.startswith("the model server failed the last 3 chat requests in a row"), failing
    assert failing.endswith(("the latest: the caller's deadline (x-sn1-deadline) passed before the model server "
                             "finished", "the latest: the caller left at its deadline (x-sn1-deadline) before the "
                             "answer ended")), failing


async def left_after(url: str, deadline: str, seconds: float) -> None:
    """A signed chat whose caller tells the miner ``deadline`` (``x-sn1-deadline``) and hangs up after ``seconds``."""
    raw = dumpb(CHAT)
    headers = Signer(VALIDATOR).headers("POST", URL(url + "/v1/chat/completions"), raw, MINER.ss58_address)
    headers |= {"Content-Type": "application/json", DEADLINE_HEADER: deadline}
    with pytest.raises(TimeoutError):
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", data=raw, headers=headers,
                                                        timeout=aiohttp.ClientTimeout(total=seconds)) as r:
            await r.read()


async def test_a_caller_that_leaves_at_its_deadline_is_a_deadline_failure_not_a_race_lost() -> None:
    """The caller's clock runs from when it sent the request, so it hangs up a little before the miner's deadline
    passes: such a request was ``status=499``, "left by the caller first" (a race lost), and a model server slower
    than callers wait showed nowhere else. One that leaves well before its deadline is still a race lost."""
    server = model_server(slow)
    lines, sink = log_lines()
    try:
        async with serve_app(server) as up, miner_before(up + "/v1") as (url, _):
            for _ in range(3):
                await left_after(url, "5", 0.3)  # another miner won the race
            await asyncio.sleep(0.2)
            assert await problems(url) == [] and lines == []
            for _ in range(3):
                await left_after(url, "1.0", 0.8)  # at its deadline, less the way here
            await asyncio.sleep(0.2)
            [failing] = await problems(url)
    finally:
        logger.remove(sink)
    assert failing.endswith("the latest: the caller left at its deadline (x-sn1-deadline) before the answer ended")
    assert len(lines) == 3 and all(" status=504 " in line and "code=deadline_exceeded" in line for line in lines), lines


async def signed_by(url: str, signer: Signer, receiver: str) -> int:
    """The status of a chat request ``signer`` signed for ``receiver``."""
    raw = dumpb(CHAT)
    headers = signer.headers("POST", URL(url + "/v1/chat/completions"), raw, receiver)
    async with aiohttp.ClientSession() as s, s.post(url + "/v1/chat/completions", data=raw,
                                                    headers=headers | {"Content-Type": "application/json"}) as r:
        return r.status


async def test_a_validators_requests_refused_for_this_miners_clock_or_hotkey_are_named() -> None:
    """A miner whose clock is off refuses every validator's request (``StaleRequest``), one run with another hotkey
    than its axon's too (``WrongReceiver``): every job a 0, while ``/health`` said nothing. A stranger's refusals
    (no permit) are no problem of this miner's."""
    stale = Signer(VALIDATOR)
    stale._clock = lambda: time.time_ns() - 60 * 10**9  # the miner's clock a minute ahead of the validator's
    stranger = Signer(keypair("//Stranger"))
    stranger._clock = stale._clock
    async with serve_app(create_fake_upstream([])) as up, miner_before(up + "/v1") as (url, _):
        assert await signed_by(url, stranger, MINER.ss58_address) == 401
        assert await signed_by(url, Signer(VALIDATOR), keypair("//Miner2").ss58_address) == 403
        assert await signed_by(url, stale, MINER.ss58_address) == 401
        found = await problems(url)
    assert [p.split(":")[0] for p in found] == [
        "requests of a validator refused as StaleRequest in the last 120 s (each a 0 when scored), the latest 0 s ago",
        "requests of a validator refused as WrongReceiver in the last 120 s (each a 0 when scored), the latest 0 s "
        "ago"], found
    assert f"hotkey {VALIDATOR.ss58_address}: StaleRequest: nonce is 60.0s old" in found[0]
    assert f"signed for receiving hotkey {keypair('//Miner2').ss58_address}, not for this receiver's " \
           f"{MINER.ss58_address}" in found[1]
