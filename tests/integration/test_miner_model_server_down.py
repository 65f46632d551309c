"""A miner whose model server is down advertises nothing until it answers again.

It kept advertising the models the server listed last (the listing asked once a minute, and its failure kept the
list): validators and APIs kept sending it requests it could only fail, each a 502 and a 0. Now a chat request the
model server fails has it listed again at once, and a second failed listing in a row takes it as down: nothing
advertised, ``/health`` says why and since when, a chat is a ``503 model_server_unavailable`` without the server
asked, it is listed every few seconds, and its models are advertised again once it answers. Each change is one
log line. A real miner in front of a real fake model server on 127.0.0.1, stopped and started again, called with
the validator's own signed client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from aiohttp import web
from loguru import logger
from yarl import URL

from neurons.miner.backends import server_watch
from shared.miner_client import MinerClient, make_session
from shared.signing import Signer
from tests.fake_upstream import MODEL, create_fake_upstream
from tests.helpers import log_lines, serve_app
from tests.integration.test_miner_model_server_health import MINER, VALIDATOR, chat, miner_before, problems
from tests.ports import free_port

DOWN_PROBE = 0.2  # the seconds between listings while the server is down (5 by default)
NOT_SERVED = f"; no model is served until its model list is read (asked every {DOWN_PROBE:g}s)"


async def availability(url: str) -> dict[str, Any]:
    """The miner's ``/availability`` as the validator polls it (signed)."""
    session = make_session()
    try:
        status, body = await MinerClient(session, Signer(VALIDATOR)).post_json(url, "/availability", {},
                                                                                MINER.ss58_address, timeout=5)
    finally:
        await session.close()
    assert status == 200
    return body


async def advertised(url: str) -> list[str]:
    return list((await availability(url))["llm_model_availabilities"])


async def until_advertised(url: str, models: list[str], seconds: float = 5.0) -> float:
    """Poll the miner's availability until it lists ``models``; the seconds it took (asserted within ``seconds``)."""
    started = time.monotonic()
    while (found := await advertised(url)) != models and time.monotonic() - started < seconds:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling another party's state (the miner, over HTTP)
    assert found == models, found
    return time.monotonic() - started


async def chat_status(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One signed chat: its status, its JSON body and its headers."""
    session = make_session()
    try:
        client = MinerClient(session, Signer(VALIDATOR))
        raw = b'{"messages": [{"role": "user", "content": "Hi"}], "model": "%s"}' % MODEL.encode()
        headers = client.signer.headers("POST", URL(url + "/v1/chat/completions"), raw, MINER.ss58_address)
        async with session.post(url + "/v1/chat/completions", data=raw,
                                headers=headers | {"Content-Type": "application/json"}) as r:
            return r.status, await r.json(), dict(r.headers)
    finally:
        await session.close()


async def test_a_model_server_gone_is_advertised_by_no_one_until_it_answers_again() -> None:
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}/v1"
    lines, sink = log_lines("INFO")
    try:
        async with contextlib.AsyncExitStack() as st:
            up = await st.enter_async_context(contextlib.AsyncExitStack())
            await up.enter_async_context(serve_app(create_fake_upstream([]), port=port))
            # the minute's listing is not what finds the outage: the failed chat request is
            url, _ = await st.enter_async_context(miner_before(upstream_url, down_probe=DOWN_PROBE))
            assert await chat(url) and await advertised(url) == [MODEL]
            await up.aclose()  # the model server stops (crashed, out of memory, restarted by hand)

            assert not await chat(url), "the request that finds it down fails"
            took = await until_advertised(url, [], seconds=3.0)
            assert took < 2.5, took
            assert (await availability(url))["task_availabilities"] == {}, "no task either"
            status, body, headers = await chat_status(url)  # from an API that has not polled since
            assert status == 503 and body["error"]["code"] == "model_server_unavailable", body
            assert body["error"]["message"].startswith("This miner serves no model now: its model server's model list could "
                                                 "not be read since "), body
            assert headers["Retry-After"] == "5"
            [down] = await problems(url)
            why = (f"could not list upstream models at {upstream_url}: cannot connect to the model server at "
                   f"127.0.0.1:{port} (Connection refused): is it running, and UPSTREAM_URL right?")
            assert down.startswith(why + NOT_SERVED + ", since "), down
            await asyncio.sleep(DOWN_PROBE * 5)  # listed again and again meanwhile: said once

            await st.enter_async_context(serve_app(create_fake_upstream([]), port=port))  # back
            assert await until_advertised(url, [MODEL], seconds=2.0) < 1.0
            assert await chat(url) and await problems(url) == []
    finally:
        logger.remove(sink)
    told = [line for line in lines if "upstream models" in line or "answers again" in line]
    assert told[1:] == [f"WARNING {why}{NOT_SERVED}: {MODEL} no longer advertised", told[2]], told
    assert told[2].startswith(f"INFO the model server at {upstream_url} answers again after "), told
    assert told[2].endswith(f" UTC): advertising {MODEL}"), told


def behind_a_proxy(proxy: dict[str, Any]) -> web.Application:
    """The fake model server behind a proxy whose ``/models`` answers each status of ``proxy["listings"]`` in turn
    (200: the server's list), and that answers everything 502 once ``proxy["gone"]``."""
    server = create_fake_upstream([])

    @web.middleware
    async def passing(request: web.Request, handler: Any) -> web.StreamResponse:
        listing = request.path.endswith("/models") and proxy["listings"] and proxy["listings"].pop(0)
        if proxy["gone"] or listing not in (200, False, []):
            return web.Response(text="<html>502 Bad Gateway</html>", status=502, content_type="text/html")
        return await handler(request)

    server.middlewares.append(passing)
    return server


async def test_one_failed_listing_while_models_are_served_is_asked_again_not_an_outage() -> None:
    """A single failed listing (a kept-alive connection closed as it was used, a proxy's blip) withdraws nothing and
    says nothing: it is asked again within a second."""
    proxy: dict[str, Any] = {"listings": [200, 502], "gone": False}  # the start's listing, then one failure
    lines, sink = log_lines()
    try:
        async with serve_app(behind_a_proxy(proxy)) as up, \
                miner_before(up + "/v1", down_probe=DOWN_PROBE, models_refresh=0.3) as (url, _):
            await asyncio.sleep(1.0)  # the failed listing, and the one that answered after it
            assert not proxy["listings"] and await advertised(url) == [MODEL]
    finally:
        logger.remove(sink)
    assert lines == []


async def test_a_proxy_whose_server_is_gone_is_found_by_the_first_chat_it_fails() -> None:
    """A proxy in front of a server that went away answers 502 to everything: found down at the chat request it
    fails, not at the minute's listing (60 s later at worst, every request meanwhile a 502 and a 0)."""
    proxy: dict[str, Any] = {"listings": [], "gone": False}
    lines, sink = log_lines()
    try:
        async with serve_app(behind_a_proxy(proxy)) as up, \
                miner_before(up + "/v1", down_probe=DOWN_PROBE) as (url, _):
            assert await chat(url) and await advertised(url) == [MODEL]
            proxy["gone"] = True
            assert not await chat(url)
            await until_advertised(url, [], seconds=2.0)
    finally:
        logger.remove(sink)
    assert len(lines) == 2 and "status=502" in lines[0], lines
    assert lines[1] == (f"WARNING could not list upstream models at {up}/v1: HTTP 502{NOT_SERVED}: {MODEL} no longer "
                        "advertised"), lines


async def test_a_model_the_server_no_longer_lists_is_no_longer_advertised_and_said_once() -> None:
    """``ollama rm`` (or a server restarted with another model): the model it listed last stayed advertised, every
    request for it a 502; and "lists no model yet" was a WARNING at every listing."""
    listed = [MODEL]
    lines, sink = log_lines()
    try:
        async with serve_app(create_fake_upstream([], models=listed)) as up, \
                miner_before(up + "/v1", models_refresh=0.1, down_probe=0.1) as (url, _):
            assert await advertised(url) == [MODEL]
            listed.clear()
            await until_advertised(url, [], seconds=2.0)
            await asyncio.sleep(0.5)  # listed again and again: said once
            status, body, _ = await chat_status(url)
            assert (status, body["error"]["code"]) == (503, "model_server_unavailable"), body
            assert await problems(url) == [f"the upstream at {up}/v1 lists no model yet: nothing is served until it "
                                           "does (Ollama: pull one with ollama pull)"]
    finally:
        logger.remove(sink)
    assert lines == [f"WARNING the upstream at {up}/v1 lists no model yet: nothing is served until it does (Ollama: "
                     "pull one with ollama pull)"], lines


async def test_a_server_too_busy_to_list_its_models_is_not_down_while_it_answers_chats(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that lists its models only between answers (a single-threaded one under load) fails its listings
    while it answers chats: withdrawn, it would lose the traffic it serves. Once it has answered none for a while
    (``ANSWERING_S``), it is down."""
    monkeypatch.setattr(server_watch, "ANSWERING_S", 1.5)
    proxy: dict[str, Any] = {"listings": [200] + [502] * 1000, "gone": False}
    async with serve_app(behind_a_proxy(proxy)) as up, \
            miner_before(up + "/v1", down_probe=DOWN_PROBE, models_refresh=0.2) as (url, _):
        for _ in range(8):  # 2 s of answers, listings failing all along
            assert await chat(url)
            await asyncio.sleep(0.25)
        assert await advertised(url) == [MODEL]
        assert await until_advertised(url, [], seconds=3.0) > 0.5  # none answered for ANSWERING_S: an outage
