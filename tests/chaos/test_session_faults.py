"""Sticky sessions pinned to each fault miner: what a caller with and without ``failover`` gets.

Each test runs its own fleet of two real miners on 127.0.0.1 (the fault, uid 1, and an honest one, uid 2,
both checking the API's real signatures) behind the API, and pins a session to the fault: with ``failover``
the honest miner is the only replacement, so where the request and the session go is known.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from neurons.miner.faults import FAIL_AFTER_ANSWER_STARTS, FAULT_PROFILES, FaultOptions
from tests.chaos.fleet import HONEST, MESSAGES, Fleet, Reply, chat, expected_answer, fleet
from tests.helpers import response_events

DEADLINE = 1.0
OPTIONS = FaultOptions(huge_bytes=1 << 20, late_seconds=DEADLINE + 0.5, trickle_interval=0.05)
CAP = 256 << 10
FAULTS = sorted(FAULT_PROFILES)
SLOW_FAULTS = {"stall-headers", "stall-body", "stall-mid", "trickle", "late"}  # they hold the request to its deadline
FAULT, GOOD = 1, 2
SEED = 7
# Every fault, streamed and not, but a stream whose answer started reaching the caller (tested on its own).
NOTHING_SENT = [pytest.param(fault, stream, id=f"{fault}-{'stream' if stream else 'json'}")
                for fault in FAULTS for stream in (False, True) if not (stream and fault in FAIL_AFTER_ANSWER_STARTS)]


@contextlib.asynccontextmanager
async def _pinned_to_the_fault(fault: str, tmp_path: Any, *, failover: bool) -> AsyncIterator[tuple[Fleet, str]]:
    async with fleet(tmp_path, {FAULT: fault, GOOD: HONEST}, options=OPTIONS, miner_max_response_bytes=CAP,
                     request_timeout=DEADLINE) as f:
        status, opened = await _call(f, "POST", "/v1/sessions", {"model": "default", "failover": failover})
        assert status == 200, opened
        await f.ctx.sessions.repin(opened["session_id"], FAULT, f.ctx.metagraph.snapshot.by_uid(FAULT).hotkey)
        yield f, opened["session_id"]


async def _call(f: Fleet, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, f.url + path, json=body,
                                                             headers={"api-key": f.key}) as r:
        return r.status, await r.json()


async def _turn(f: Fleet, *, stream: bool, path: str = "/v1/chat/completions", **extra: Any) -> Reply:
    """A turn with the node's deadline (``DEADLINE``), or ``extra`` fields' own."""
    body: dict[str, Any] = {"model": "default", "stream": stream, "seed": SEED, **extra}
    body |= {"input": MESSAGES} if path == "/v1/responses" else {"messages": MESSAGES}
    async with aiohttp.ClientSession() as http:
        return await chat(http, f, body, path=path)


async def _pinned_uid(f: Fleet) -> int | None:
    status, current = await _call(f, "GET", "/v1/sessions")
    return current["uid"] if status == 200 else None


@pytest.mark.parametrize(("fault", "stream"), NOTHING_SENT)
async def test_with_failover_a_fault_that_sent_the_caller_nothing_is_answered_by_the_replacement(
        tmp_path, fault: str, stream: bool) -> None:
    """A pinned miner that sent its role chunk (every OpenAI-compatible server's first) and then dropped
    (``disconnect``), or a non-streamed answer cut short or stalled after its first chunk, was not failed over:
    a 502 telling a caller with failover to "open another with failover" (a 504 for the stall), and the session
    kept pinning that miner. The caller had got nothing of it, as for a miner that sent no byte."""
    async with _pinned_to_the_fault(fault, tmp_path, failover=True) as (f, session_id):
        reply = await _turn(f, stream=stream)
        assert reply.elapsed < DEADLINE + 1, f"{fault} held the request {reply.elapsed:.2f}s"
        assert reply.headers.get("x-sn1-session-moved-from") == str(FAULT), (reply.status, reply.text)
        assert reply.headers["x-sn1-session-id"] == session_id
        if fault in SLOW_FAULTS:  # the fault used the whole deadline: none left for the replacement
            error = json.loads(reply.text)["error"]
            assert (reply.status, error["code"]) == (504, "deadline_exceeded"), reply.text
            assert f"now pins uid {GOOD}" in error["message"], error
        else:
            assert reply.status == 200, reply.text
            assert reply.headers["x-sn1-miner-uid"] == str(GOOD)
            assert reply.content() == expected_answer(SEED)
        assert await _pinned_uid(f) == GOOD, "the session moved off the fault"
        again = await _turn(f, stream=stream)
        assert again.status == 200 and again.headers["x-sn1-miner-uid"] == str(GOOD), again.text
        assert "x-sn1-session-moved-from" not in again.headers


@pytest.mark.parametrize(("fault", "stream"), NOTHING_SENT)
async def test_without_failover_a_fault_is_the_sessions_502_or_504_and_the_session_stays(
        tmp_path, fault: str, stream: bool) -> None:
    async with _pinned_to_the_fault(fault, tmp_path, failover=False) as (f, session_id):
        reply = await _turn(f, stream=stream)
        error = json.loads(reply.text)["error"]
        expected = (504, "deadline_exceeded") if fault in SLOW_FAULTS else (502, "session_miner_failed")
        assert (reply.status, error["code"]) == expected, reply.text
        assert session_id in error["message"] and f"uid {FAULT}" in error["message"], error
        assert "x-sn1-session-moved-from" not in reply.headers
        assert await _pinned_uid(f) == FAULT, "without failover the session stays until a ping or expiry"


async def test_the_responses_api_in_a_failover_session_is_answered_past_a_miner_that_dropped(tmp_path) -> None:
    """The Responses API runs in the key's session as chat does: the dropped miner's request is failed over."""
    async with _pinned_to_the_fault("disconnect", tmp_path, failover=True) as (f, session_id):
        reply = await _turn(f, stream=True, path="/v1/responses")
        assert reply.status == 200 and reply.headers["x-sn1-session-moved-from"] == str(FAULT), reply.text
        events = response_events(reply.text)
        assert events[-1]["type"] == "response.completed"
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == expected_answer(SEED) and await _pinned_uid(f) == GOOD


@pytest.mark.parametrize("failover", [True, False], ids=["failover", "no failover"])
@pytest.mark.parametrize("fault", sorted(FAIL_AFTER_ANSWER_STARTS))
async def test_a_stream_that_failed_midway_moves_a_failover_session_off_its_miner(tmp_path, fault: str,
                                                                                   failover: bool) -> None:
    """The answer started reaching the caller, so this request cannot go elsewhere: it ends with the error event.
    With failover the session moved off the miner all the same; it stayed, and every turn was cut short
    there (a ping, one token, said "ok")."""
    async with _pinned_to_the_fault(fault, tmp_path, failover=failover) as (f, _):
        reply = await _turn(f, stream=True)
        assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == str(FAULT), reply.text
        failure = json.loads(reply.sse_datas()[-2])["error"]
        assert failure["code"] == "miner_failed_mid_stream" and f"uid {FAULT}" in failure["message"], failure
        assert await _pinned_uid(f) == (GOOD if failover else FAULT)
        again = await _turn(f, stream=True)
        assert again.headers["x-sn1-miner-uid"] == str(GOOD if failover else FAULT), again.text
        if failover:
            assert again.content() == expected_answer(SEED) and again.sse_datas()[-1] == "[DONE]"



async def test_a_response_cut_short_midway_moves_a_failover_session_too(tmp_path) -> None:
    """The Responses API's stream ends ``response.failed`` as the miner's broke; the session moves off that
    miner as for chat."""
    async with _pinned_to_the_fault("cut-short", tmp_path, failover=True) as (f, _):
        reply = await _turn(f, stream=True, path="/v1/responses")
        assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == str(FAULT), reply.text
        assert response_events(reply.text)[-1]["type"] == "response.failed"
        assert await _pinned_uid(f) == GOOD


async def test_a_stream_cut_by_the_callers_own_short_timeout_keeps_the_session(tmp_path) -> None:
    """A miner still answering when the caller's own ``timeout`` (shorter than the node's) ran out is not
    failed by it, as for its score: the session stays on it."""
    async with _pinned_to_the_fault("stall-mid", tmp_path, failover=True) as (f, _):
        reply = await _turn(f, stream=True, timeout=DEADLINE / 2)
        assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == str(FAULT), reply.text
        assert json.loads(reply.sse_datas()[-2])["error"]["code"] == "miner_failed_mid_stream"
        assert await _pinned_uid(f) == FAULT
