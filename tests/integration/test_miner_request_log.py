"""What a miner's operator sees of requests that are not chat: the signature check's refusals (a
WARNING line each, a flood summarised), ``/availability`` and ``/health`` (DEBUG, counted in the
minute's summary). A real miner on 127.0.0.1, its log read through a loguru sink."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from bittensor import http_auth
from loguru import logger

from neurons.miner import traffic
from neurons.miner.app import STOPPING, create_miner_app
from neurons.miner.backends import server_watch
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.fake_upstream import create_fake_upstream
from tests.helpers import keypair, serve_app
from tests.ports import free_port

VALIDATOR, MINER, STRANGER = keypair("//Validator"), keypair("//Miner1"), keypair("//Stranger")
BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "sn1/deterministic"}).encode()
CHAT = "/v1/chat/completions"


@pytest.fixture
def log() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of every line from DEBUG up."""
    out: list[tuple[str, str]] = []
    sink = logger.add(lambda m: out.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    try:
        yield out
    finally:
        logger.remove(sink)


def miner_app(max_body_bytes: int = 8 << 20):
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    return create_miner_app(DeterministicBackend(), verifier, max_body_bytes=max_body_bytes)


def signed(path: str, body: bytes = BODY, *, signer=VALIDATOR, nonce_ns: int | None = None) -> dict[str, str]:
    if nonce_ns is None:
        return Signer(signer).headers("POST", path, body, MINER.ss58_address)
    return http_auth.sign(signer, method="POST", path=path, body=body, receiver_ss58=MINER.ss58_address,
                          nonce_ns=nonce_ns)


async def post(url: str, path: str, headers: dict[str, str], body: bytes = BODY) -> int:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=body, headers=headers) as r:
        await r.read()
        return r.status


def refusals(log: list[tuple[str, str]]) -> list[str]:
    return [m for level, m in log if level == "WARNING" and m.startswith("refused rid=")]


async def test_each_refused_request_is_a_warning_with_id_hotkey_route_status_and_reason(
        log: list[tuple[str, str]]) -> None:
    """A validator whose requests the miner refused (no signature, a bad one, no permit, a stale
    clock) left no trace at any level but DEBUG's absent chat line: its operator could not tell."""
    app = miner_app()  # started before the requests are signed: one signed earlier is refused as such
    tampered = signed(CHAT)
    cases = [("no-signature", {}, 400, "MalformedAuth", "-"),
             ("bad-signature", {**tampered, "X-Bittensor-Signature": "0x" + "ab" * 64}, 401, "BadSignature",
              VALIDATOR.ss58_address),
             ("unknown-hotkey", signed(CHAT, signer=STRANGER), 403, "NotAValidator", STRANGER.ss58_address),
             ("stale-nonce", signed(CHAT, nonce_ns=time.time_ns() - 600 * 10**9), 401, "StaleRequest",
              VALIDATOR.ss58_address),
             ("made-up-hotkey", {**tampered, "X-Bittensor-Hotkey": "5Fake rid=x status=200"}, 400,
              "MalformedAuth", "invalid")]
    async with serve_app(app) as url:
        for rid, headers, status, _, _ in cases:
            assert await post(url, CHAT, {**headers, "x-request-id": rid}) == status, rid
        assert await post(url, "/availability", {**signed("/availability", b"{}"), "x-request-id": "ok"},
                          b"{}") == 200
    lines = refusals(log)
    assert len(lines) == len(cases), "one line per refusal, none for the signed request"
    for (rid, _, status, reason, hotkey), line in zip(cases, lines, strict=True):
        base = f"refused rid={rid} hotkey={hotkey} method=POST route={CHAT} status={status} reason={reason}"
        if reason == "NotAValidator":  # why it is not taken (it said only "NotAValidator")
            assert line == (f"{base} (hotkey {STRANGER.ss58_address} holds no validator permit here and is not "
                            "allow-listed)")
        elif reason != "StaleRequest":
            assert line == base
        else:  # by how much the caller's clock is off, and what to check (it said only "StaleRequest")
            assert line.startswith(base + " (nonce is 600.") and "s old, past the 10s freshness window" in line
            assert line.endswith("check that NTP keeps both hosts' clocks right)")
    signatures = [h["X-Bittensor-Signature"] for _, h, *_ in cases if "X-Bittensor-Signature" in h]
    assert not any(sig[2:] in m for sig in signatures for _, m in log), "a signature is never logged"


async def test_a_request_signed_for_another_hotkey_names_both(log: list[tuple[str, str]]) -> None:
    """A miner run with another hotkey than the one its axon is published under refuses every validator's request
    as ``WrongReceiver``: its line said only that, not which hotkey the callers sign for nor which one it runs
    with. A receiver header that is no address is not echoed."""
    async with serve_app(miner_app()) as url:
        other = http_auth.sign(VALIDATOR, method="POST", path=CHAT, body=BODY, receiver_ss58=STRANGER.ss58_address)
        assert await post(url, CHAT, {**other, "x-request-id": "elsewhere"}) == 403
        forged = {**other, "X-Bittensor-Receiver": "5Fake rid=x status=200"}
        assert await post(url, CHAT, {**forged, "x-request-id": "forged"}) == 403
    base = f"hotkey={VALIDATOR.ss58_address} method=POST route={CHAT} status=403 reason=WrongReceiver"
    assert refusals(log) == [
        f"refused rid=elsewhere {base} (request was signed for receiving hotkey {STRANGER.ss58_address}, not for "
        f"this receiver's {MINER.ss58_address} (the hotkey of its WALLET_NAME/WALLET_HOTKEY))",
        f"refused rid=forged {base} (request was signed for receiving hotkey an invalid address, not for this "
        f"receiver's {MINER.ss58_address} (the hotkey of its WALLET_NAME/WALLET_HOTKEY))"]


async def test_a_body_too_large_to_be_checked_is_a_refusal_line_too(log: list[tuple[str, str]]) -> None:
    """It is refused before its signature is read: it had no line at all."""
    big = b'{"messages": [' + b" " * 2048 + b"]}"
    async with serve_app(miner_app(max_body_bytes=1024)) as url:
        assert await post(url, CHAT, {**signed(CHAT, big), "x-request-id": "big"}, big) == 413
    assert refusals(log) == [f"refused rid=big hotkey={VALIDATOR.ss58_address} method=POST route={CHAT} "
                             "status=413 reason=request_entity_too_large"]


async def test_a_flood_of_refusals_is_a_few_lines_and_one_summary(log: list[tuple[str, str]],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A stranger can send refusals as fast as it likes: the first REFUSAL_LINES of a minute get a line
    each, the rest one WARNING at the minute's end with their count, reasons and hotkeys."""
    monkeypatch.setattr(traffic, "SUMMARY_SECONDS", 0.5)  # the summary loop's minute, shortened
    extra = 15
    async with serve_app(miner_app()) as url:
        async with aiohttp.ClientSession() as s:
            for i in range(traffic.REFUSAL_LINES + extra):
                headers = signed(CHAT, signer=STRANGER) if i % 3 else {}
                async with s.post(url + CHAT, data=BODY, headers=headers) as r:
                    assert r.status in (400, 403)
        assert len(refusals(log)) == traffic.REFUSAL_LINES
        for _ in range(40):
            await asyncio.sleep(0.05)
            summaries = [m for level, m in log if level == "WARNING" and m.startswith("refused ") and " more " in m]
            if summaries:
                break
    (summary,) = summaries
    assert summary.startswith(f"refused {extra} more requests in the last 0s than were logged one by one "
                              f"({traffic.REFUSAL_LINES}): "), summary
    assert "NotAValidator=" in summary and "MalformedAuth=" in summary, summary
    assert f"from 2 hotkey(s), most: {STRANGER.ss58_address} (" in summary, summary


async def test_availability_and_health_are_debug_lines_counted_in_the_minutes_summary(
        log: list[tuple[str, str]]) -> None:
    """They had no line at all: an operator could not see validators polling the miner."""
    app = miner_app()
    async with serve_app(app) as url:
        for i in range(2):
            assert await post(url, "/availability", {**signed("/availability", b"{}"), "x-request-id": f"av{i}"},
                              b"{}") == 200
        async with aiohttp.ClientSession() as s, s.get(url + "/health", headers={"x-request-id": "hc"}) as r:
            assert r.status == 200
        summary = app[traffic.TRAFFIC].summary(60)
    debug = [m for level, m in log if level == "DEBUG"]
    assert f"availability rid=av0 caller={VALIDATOR.ss58_address[:10]} status=200" in debug
    assert "health rid=hc caller=- status=200" in debug
    assert not [m for level, m in log if level not in ("DEBUG", "TRACE")], "nothing above DEBUG per request"
    assert summary == "served no chat requests in the last 60s; 2 availability, 1 health"


def failures(log: list[tuple[str, str]]) -> list[str]:
    return [m for level, m in log if level == "WARNING" and m.startswith("chat rid=")]


async def openai_miner_post(upstream_url: str, bodies: list[tuple[str, dict]], *, timeout: float = 120.0,
                            stopped: contextlib.AsyncExitStack | None = None) -> list[int]:
    """Each (request id, body) sent, signed, to a miner in front of ``upstream_url`` (``UPSTREAM_TIMEOUT``:
    ``timeout``); their statuses. ``stopped``: the model server, stopped once the miner has started."""
    backend = OpenAICompatibleBackend(upstream_url, timeout=timeout)
    await backend.start()
    if stopped is not None:
        await stopped.aclose()
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
    try:
        async with serve_app(create_miner_app(backend, verifier)) as url:
            statuses = []
            for rid, body in bodies:
                raw = json.dumps(body).encode()
                statuses.append(await post(url, CHAT, {**signed(CHAT, raw), "x-request-id": rid}, raw))
            return statuses
    finally:
        await backend.close()


async def test_a_request_the_model_server_fails_or_refuses_is_a_warning_with_id_caller_and_why(
        log: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A model server down, or refusing a field, failed every request with nothing above DEBUG but a count
    in the minute's summary: the operator could not tell the miner was earning nothing, nor why."""
    monkeypatch.setattr(server_watch, "CONFIRM_S", 5.0)  # both requests reach the server before it is taken as down
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    down = free_port()
    async with contextlib.AsyncExitStack() as server:  # gone after the start (before it, nothing is advertised)
        await server.enter_async_context(serve_app(create_fake_upstream([]), port=down))
        assert await openai_miner_post(f"http://127.0.0.1:{down}/v1", [("down", ask), ("down-s", {
            **ask, "stream": True})], stopped=server) == [502, 502]
    async with serve_app(create_fake_upstream([], refuses=frozenset({"response_format"}))) as up:
        assert await openai_miner_post(up + "/v1", [("ok", ask), ("json", {
            **ask, "response_format": {"type": "json_object"}})]) == [200, 400]
    lines = failures(log)
    assert len(lines) == 3, lines
    for line, rid in zip(lines[:2], ("down", "down-s"), strict=True):
        assert line.startswith(f"chat rid={rid} caller={VALIDATOR.ss58_address} stream={rid == 'down-s'} "
                               "status=502 latency_ms=") and "code=backend_error: the model server failed: upstream " \
            in line, line
        # what to check, not aiohttp's "Cannot connect to host ... ssl:default [Connect call failed ...]"
        assert line.endswith(f"cannot connect to the model server at 127.0.0.1:{down} (Connection refused): is it "
                             "running, and UPSTREAM_URL right?"), line
    assert lines[2].startswith(f"chat rid=json caller={VALIDATOR.ss58_address} stream=False status=400 latency_ms=")
    assert lines[2].endswith(" code=model_server_rejected: the model server refused the request: upstream HTTP 400: "
                             "Unrecognized request argument supplied: response_format"), lines[2]


async def test_a_model_server_slower_than_upstream_timeout_is_said_so(log: list[tuple[str, str]]) -> None:
    """Its line ended ``upstream failed: TimeoutError: ``, aiohttp's empty message: nothing said which timeout."""
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions", slow)
    ask = {"messages": [{"role": "user", "content": "hi"}]}
    async with serve_app(up) as upstream:
        assert await openai_miner_post(upstream + "/v1", [("slow", ask), ("slow-s", {**ask, "stream": True})],
                                       timeout=0.3) == [502, 502]
    lines = failures(log)
    assert [line.partition(" latency_ms=")[0] for line in lines] == [
        f"chat rid=slow caller={VALIDATOR.ss58_address} stream=False status=502",
        f"chat rid=slow-s caller={VALIDATOR.ss58_address} stream=True status=502"], lines
    assert lines[0].endswith("code=backend_error: the model server failed: upstream failed: no answer within "
                             "UPSTREAM_TIMEOUT (0.3 s)"), lines[0]
    assert lines[1].endswith("upstream stream failed: no answer within UPSTREAM_TIMEOUT (0.3 s)"), lines[1]


async def test_a_key_the_model_server_quotes_back_is_neither_logged_nor_passed_on(log: list[tuple[str, str]]) -> None:
    """A server that quotes the key it refused ("Incorrect API key provided: ...") had the miner write
    UPSTREAM_API_KEY into its log and into its 502 to the API, which quotes miners' errors to callers."""
    key = "sk-live-0123456789abcdef"

    async def refuse(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {sent}.",
                                            "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions", refuse)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    async with serve_app(up) as upstream:
        backend = OpenAICompatibleBackend(upstream + "/v1", api_key=key)
        await backend.start()
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        try:
            async with serve_app(create_miner_app(backend, verifier)) as url, aiohttp.ClientSession() as s:
                async with s.post(url + CHAT, data=body, headers={**signed(CHAT, body), "x-request-id": "k"}) as r:
                    answer = await r.text()
                    assert r.status == 502
        finally:
            await backend.close()
    assert "Incorrect API key provided: ***." in answer and key not in answer, answer
    (line,) = failures(log)
    assert line.endswith("the model server failed: upstream HTTP 401: Incorrect API key provided: ***."), line
    assert not any(key in m for _, m in log)


def test_a_failure_that_quotes_a_line_break_is_one_log_line(log: list[tuple[str, str]]) -> None:
    """The server's words may quote the caller's (an unknown field's name): they must not forge a line."""
    traffic.TrafficLog().record(rid="r", caller="5V", stream=False, status=400, latency_ms=1.0,
                                failure="Unrecognized request argument supplied: x\n2026-01-01 | INFO | miner | ok")
    (line,) = failures(log)
    assert "\n" not in line and line.endswith("supplied: x\\x0a2026-01-01 | INFO | miner | ok")


def first_chunk_then(then: Callable[[web.Request], Awaitable[None]]) -> web.Application:
    """A model server (its one model ``m``) that streams a chat's first chunk, then does ``then`` with the request."""
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "u", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await then(request)
        return response

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions", chat)
    return up


async def test_a_model_server_that_drops_a_stream_midway_is_a_warning_with_the_requests_id(
        log: list[tuple[str, str]]) -> None:
    """It was a WARNING without the request id or the caller: not to be found among a minute's requests. And
    without the code: a request the model server failed before its stream began says ``code=backend_error``, one
    it failed mid-way said none (nor did its last event, which now has OpenAI's shape, code included)."""
    async def cut(request: web.Request) -> None:
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()  # the model server dies mid-answer

    async with serve_app(first_chunk_then(cut)) as upstream:
        statuses = await openai_miner_post(upstream + "/v1", [("cut", {"messages": [{"role": "user", "content": "hi"}],
                                                                       "stream": True})])
    assert statuses == [200], "the stream had begun"
    (line,) = failures(log)
    assert line.startswith(f"chat rid=cut caller={VALIDATOR.ss58_address} stream=True status=502 latency_ms="), line
    # not aiohttp's "Response payload is not completed: <TransferEncodingError: 400, ...>", a 400 that never was
    assert line.endswith(" code=backend_error: the model server failed: mid-stream: upstream stream failed: the model "
                         "server closed the connection before its answer ended (ClientPayloadError)"), line


async def test_each_chat_request_is_one_info_line_written_by_the_shutdown_at_the_latest(
        log: list[tuple[str, str]]) -> None:
    """The request's line names the caller's request id and says how it went; batched, a line still queued
    when the miner stops is written then, not lost."""
    app = miner_app()
    app[traffic.TRAFFIC].lines.flush_seconds = 3600  # nothing but the shutdown can write it
    async with serve_app(app) as url:
        assert await post(url, CHAT, {**signed(CHAT), "x-request-id": "late-line"}) == 200
        unknown = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "not-here"}).encode()
        assert await post(url, CHAT, {**signed(CHAT, unknown), "x-request-id": "no-model"}, unknown) == 404
        assert not [m for _, m in log if "rid=late-line" in m] and app[traffic.TRAFFIC].lines.pending == 2
    lines = [x.split(" | ", 3)[-1] for level, m in log if level == "INFO" for x in m.splitlines() if " chat rid=" in x]
    caller = VALIDATOR.ss58_address[:10]
    assert lines[0].startswith(f"chat rid=late-line caller={caller} stream=False status=200 latency_ms="), lines
    assert lines[1].startswith(f"chat rid=no-model caller={caller} stream=False status=404 latency_ms="), lines
    assert lines[1].endswith(" code=model_not_found model=not-here") and len(lines) == 2, lines


async def test_a_model_not_served_is_named_in_its_line_as_one_word_cut_short(log: list[tuple[str, str]]) -> None:
    """A request for a model this miner does not serve was logged ``code=model_not_found`` alone: the operator could
    not tell which model the validators ask for that it lacks. Its line names it: the caller's words, a space or an
    ``=`` escaped (it could forge a field), a long one cut."""
    asked = ["meta-llama/Llama-3.1-8B-Instruct", 'x status=200 code="ok"', "m" * 5000]
    async with serve_app(miner_app()) as url:
        for i, model in enumerate(asked):
            body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": model}).encode()
            assert await post(url, CHAT, {**signed(CHAT, body), "x-request-id": f"nm-{i}"}, body) == 404
    lines = [x.split(" | ", 3)[-1] for level, m in log if level == "INFO" for x in m.splitlines() if " chat rid=nm-" in x]
    assert len(lines) == 3, lines
    assert lines[0].endswith(" code=model_not_found model=meta-llama/Llama-3.1-8B-Instruct"), lines[0]
    assert lines[1].endswith(r" code=model_not_found model=x\x20status\x3d200\x20code\x3d\x22ok\x22"), lines[1]
    assert lines[2].endswith(" model=" + "m" * 100 + "...") and len(lines[2]) < 300, lines[2]


async def test_a_request_cut_by_the_miners_own_stop_is_not_a_caller_that_left(log: list[tuple[str, str]]) -> None:
    """A stream still relayed when the miner was stopped (its grace over) was logged ``status=499``, and counted
    in the minute's line as "left by the caller first": the caller had not left, the miner had cut it."""
    asked = asyncio.Event()

    async def stalls(_request: web.Request) -> None:
        asked.set()
        await asyncio.sleep(30)

    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    async with serve_app(first_chunk_then(stalls)) as upstream:
        backend = OpenAICompatibleBackend(upstream + "/v1")
        await backend.start()
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        app = create_miner_app(backend, verifier)
        async with serve_app(app) as url:  # its exit is the stop (serve_until_signal's cleanup)
            caller = asyncio.create_task(post(url, CHAT, {**signed(CHAT, raw), "x-request-id": "cut"}, raw))
            await asyncio.wait_for(asked.wait(), 10)
        with pytest.raises(aiohttp.ClientError):
            await caller  # the stream was cut: the caller did not leave
        summary = app[traffic.TRAFFIC].summary(60)
    lines = [m for level, m in log if "chat rid=cut " in m]
    assert len(lines) == 1 and " status=503 " in lines[0] and lines[0].rstrip().endswith(" code=miner_stopped"), lines
    assert summary is not None and "(1 failed, 0 left by the caller first)" in summary, summary


async def test_a_caller_that_leaves_while_the_miner_stops_is_still_a_caller_that_left(
        log: list[tuple[str, str]]) -> None:
    """The API settles a race and cancels its losers at any time, during a miner's stop too: such a request, whose
    caller left in the stop's grace, was logged ``status=503 code=miner_stopped`` and counted failed, as if the
    stop had cut it. It is ``status=499``, "left by the caller first", as at any other time."""
    asked = asyncio.Event()

    async def stalls(_request: web.Request) -> None:
        asked.set()
        await asyncio.sleep(30)

    raw = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    async with serve_app(first_chunk_then(stalls)) as upstream, contextlib.AsyncExitStack() as serving:
        backend = OpenAICompatibleBackend(upstream + "/v1")
        await backend.start()
        verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address}))
        app = create_miner_app(backend, verifier)
        url = await serving.enter_async_context(serve_app(app))
        caller = asyncio.create_task(post(url, CHAT, {**signed(CHAT, raw), "x-request-id": "left"}, raw))
        await asyncio.wait_for(asked.wait(), 10)
        stopping = asyncio.create_task(serving.aclose())  # the stop; its grace (1 s here) begins
        await asyncio.wait_for(app[STOPPING].wait(), 10)
        caller.cancel()  # the API took another miner's answer: it closes this connection
        await asyncio.gather(caller, return_exceptions=True)
        await stopping
        summary = app[traffic.TRAFFIC].summary(60)
    lines = [m for level, m in log if "chat rid=left " in m]
    assert len(lines) == 1 and " status=499 " in lines[0], lines
    assert summary is not None and "(0 failed, 1 left by the caller first)" in summary, summary


async def test_a_streamed_requests_line_says_its_time_to_first_chunk(log: list[tuple[str, str]]) -> None:
    """The validator's latency reward is to the first word: a line with the whole answer's time alone could not
    tell a model server slow to start from one slow to finish. A JSON answer has no first chunk: none said."""
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delay, delta, finish in ((0.05, {"content": "Hi"}, None), (0.4, {}, "stop")):
            await asyncio.sleep(delay)
            chunk = {"id": "u", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    up = web.Application()
    up.router.add_get("/v1/models", lambda _r: web.json_response({"data": [{"id": "m"}]}))
    up.router.add_post("/v1/chat/completions", chat)
    ask = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with serve_app(up) as upstream:
        assert await openai_miner_post(upstream + "/v1", [("ttft", ask)]) == [200]
    app = miner_app()
    async with serve_app(app) as url:
        assert await post(url, CHAT, {**signed(CHAT), "x-request-id": "whole"}) == 200
        app[traffic.TRAFFIC].lines.flush()
    lines = {x.split(" | ", 3)[-1].split()[1]: x.split(" | ", 3)[-1] for _, m in log for x in m.splitlines()
             if " chat rid=" in x}
    fields = dict(f.split("=", 1) for f in lines["rid=ttft"].split()[1:])
    assert 40 <= float(fields["ttft_ms"]) <= float(fields["latency_ms"]) - 300, lines["rid=ttft"]
    assert "ttft_ms=" not in lines["rid=whole"], lines["rid=whole"]
