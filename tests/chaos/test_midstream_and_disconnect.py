"""After the winner started: its failure ends the stream with an SSE error event then ``[DONE]``;
a client that goes away cancels every miner request for it within 1 s."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from neurons.miner.faults import FaultOptions
from neurons.validator.payload import OrganicPayload
from tests.chaos.fleet import MESSAGES, chat, expected_answer, fleet, wait_until
from tests.helpers import response_events

DEADLINE = 1.5
SLOW = ["stall-headers", "stall-body", "stall-mid", "trickle", "late"]


def assert_error_then_done(datas: list[str]) -> dict:
    assert datas[-1] == "[DONE]"
    err = json.loads(datas[-2])["error"]
    assert set(err) == {"message", "type", "code", "param"} and err["code"] == "miner_failed_mid_stream"
    return err


@pytest.mark.parametrize(("fault", "options"), [
    ("stall-mid", FaultOptions(stall_after_chunks=2)),
    ("disconnect", FaultOptions(disconnect_after_chunks=2)),
])
async def test_winner_failing_mid_stream_ends_with_error_event_then_done(
    tmp_path: Path, fault: str, options: FaultOptions
) -> None:
    async with fleet(tmp_path, {1: fault}, options=options) as f, aiohttp.ClientSession() as s:
        reply = await chat(s, f, {"messages": MESSAGES, "seed": 9, "stream": True, "timeout": DEADLINE})
    assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == "1"
    assert reply.elapsed < DEADLINE + 1
    datas = reply.sse_datas()
    assert_error_then_done(datas)
    relayed = "".join(json.loads(d)["choices"][0]["delta"].get("content") or "" for d in datas[:-2])
    assert relayed and expected_answer(9).startswith(relayed), "what was relayed is the winner's own prefix"
    assert len(relayed) < len(expected_answer(9))


async def test_an_answer_cut_short_is_not_passed_off_as_complete(tmp_path: Path) -> None:
    """A miner whose model server dropped mid-answer ends its stream cleanly but without a
    ``finish_reason``: streamed, the caller is told it broke; waited for, it is no answer (a 502),
    never a shorter answer labelled ``stop``."""
    async with fleet(tmp_path, {1: "cut-short"}) as f, aiohttp.ClientSession() as s:
        streamed = await chat(s, f, {"messages": MESSAGES, "seed": 9, "stream": True, "timeout": DEADLINE})
        waited = await chat(s, f, {"messages": MESSAGES, "seed": 9, "timeout": DEADLINE})
    assert streamed.status == 200
    err = assert_error_then_done(streamed.sse_datas())
    assert "without a finish_reason" in err["message"]
    assert waited.status == 502, waited.text
    assert "without a finish_reason" in json.loads(waited.text)["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"], ids=["chat", "completions"])
async def test_choices_whose_winners_fail_mid_stream_end_with_one_error_event(tmp_path: Path, path: str) -> None:
    """``n`` = 2 from one miner that drops its streams: both choices start, both fail, one error event
    names both, then ``[DONE]`` (on chat completions, and on the text completions that share the code)."""
    asked = {"messages": MESSAGES} if path == "/v1/chat/completions" else {"prompt": MESSAGES[0]["content"],
                                                                            "max_tokens": 200}
    async with fleet(tmp_path, {1: "disconnect"}, options=FaultOptions(disconnect_after_chunks=2)) as f, \
            aiohttp.ClientSession() as s:
        reply = await chat(s, f, {**asked, "seed": 9, "stream": True, "n": 2, "timeout": DEADLINE}, path=path)
    assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == "1,1"
    datas = reply.sse_datas()
    err = assert_error_then_done(datas)
    assert err["message"].count("miner uid 1 failed mid-stream") == 2
    indexes = {c["index"] for d in datas[:-2] for c in json.loads(d)["choices"]}
    assert indexes == {0, 1}, "both choices were relayed before they failed"


@pytest.mark.parametrize("stream", [False, True], ids=["waiting", "mid-stream"])
async def test_client_disconnect_cancels_every_miner_request_within_1s(tmp_path: Path, stream: bool) -> None:
    profiles = dict(enumerate(SLOW, start=1))
    async with fleet(tmp_path, profiles, options=FaultOptions(late_seconds=60, trickle_interval=0.5)) as f:
        async with aiohttp.ClientSession() as s:
            request = asyncio.ensure_future(s.post(f.url + "/v1/chat/completions", headers={"api-key": f.key},
                                                   json={"messages": MESSAGES, "stream": stream, "timeout": 60,
                                                         "uids": list(profiles)}))
            if stream:
                resp = await request
                assert resp.status == 200 and resp.headers["x-sn1-miner-uid"] == str(SLOW.index("stall-mid") + 1)
                assert (await resp.content.readline()).startswith(b"data: ")
            else:  # the API is waiting for a winner that never comes (a slow host takes a while to ask them all)
                await wait_until(lambda: f.in_flight() == len(SLOW), 5.0)
            assert f.in_flight() == len(SLOW), "every miner must be busy with the request"
            request.cancel()  # the client goes away
            if stream:
                resp.close()
        elapsed = await wait_until(lambda: f.in_flight() == 0, 3.0)
        assert f.in_flight() == 0, {uid: s.active for uid, s in f.stats.items()}
        assert elapsed < 1.0, f"miner requests outlived the client by {elapsed:.2f}s"
        assert sum(st.cancelled for st in f.stats.values()) == len(SLOW)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}),
    ("/v1/completions", {"prompt": ["Pelseldan?", "Zorgal?"]}),
], ids=["chat-n", "completions-batch"])
async def test_a_client_leaving_a_request_of_several_races_cancels_them_all(tmp_path: Path, path: str,
                                                                           body: dict) -> None:
    profiles = dict(enumerate(SLOW, start=1))
    async with fleet(tmp_path, profiles, options=FaultOptions(late_seconds=60, trickle_interval=0.5)) as f:
        async with aiohttp.ClientSession() as s:
            request = asyncio.ensure_future(s.post(f.url + path, headers={"api-key": f.key},
                                                   json={**body, "timeout": 60, "uids": list(profiles)}))
            # two races, every miner in each, waiting for winners that never come
            await wait_until(lambda: f.in_flight() == 2 * len(SLOW), 5.0)
            assert f.in_flight() == 2 * len(SLOW)
            request.cancel()
        elapsed = await wait_until(lambda: f.in_flight() == 0, 3.0)
        assert f.in_flight() == 0 and elapsed < 1.0, f"miner requests outlived the client by {elapsed:.2f}s"


@pytest.mark.parametrize(("path", "body"), [
    ("/web_retrieval", {"search_query": "Pelseldan", "max_response_time": 60}),
    ("/v1/responses", {"input": "Pelseldan", "tools": [{"type": "web_search"}], "timeout": 120}),
], ids=["web_retrieval", "responses_web_search"])
async def test_a_client_leaving_during_a_search_cancels_its_miner_requests(tmp_path: Path, path: str,
                                                                           body: dict) -> None:
    """A search waits for every retrieval miner (to merge their results): when the caller goes, so do they
    (``Race.finish`` gathers the miner tasks, and a cancelled gather cancels each of them)."""
    profiles = dict(enumerate(SLOW, start=1))
    async with fleet(tmp_path, profiles, options=FaultOptions(late_seconds=60, trickle_interval=0.5)) as f:
        async with aiohttp.ClientSession() as s:
            request = asyncio.ensure_future(s.post(f.url + path, headers={"api-key": f.key},
                                                   json={**body, "uids": list(profiles)}))
            await wait_until(lambda: f.in_flight() >= 3, 3.0)
            await asyncio.sleep(0.2)
            busy = f.in_flight()  # the uids asked (/web_retrieval), or WEB_RETRIEVAL_N_MINERS (3) of them
            assert busy >= 3, "the search's miners must be busy with it"
            request.cancel()
        elapsed = await wait_until(lambda: f.in_flight() == 0, 3.0)
        assert f.in_flight() == 0 and elapsed < 1.0, f"miner requests outlived the client by {elapsed:.2f}s"
        assert sum(st.cancelled for st in f.stats.values()) == busy


async def test_a_responses_stream_whose_winner_fails_ends_with_response_failed(tmp_path: Path) -> None:
    """The Responses API's way to say it: every item closed, then ``response.failed`` naming the miner."""
    async with fleet(tmp_path, {1: "disconnect"}, options=FaultOptions(disconnect_after_chunks=2)) as f, \
            aiohttp.ClientSession() as s:
        async with s.post(f.url + "/v1/responses", headers={"api-key": f.key},
                          json={"input": MESSAGES, "seed": 9, "stream": True, "timeout": DEADLINE}) as r:
            assert r.status == 200 and r.headers["x-sn1-miner-uid"] == "1"
            text = await r.text()
    events = response_events(text)
    last = events[-1]
    assert last["type"] == "response.failed" and "miner uid 1 failed mid-stream" in last["response"]["error"]["message"]
    relayed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert relayed and expected_answer(9).startswith(relayed) and len(relayed) < len(expected_answer(9))
    assert last["response"]["output"][0]["content"][0]["text"] == relayed



async def test_a_winner_cut_off_by_the_callers_deadline_still_leaves_a_payload_the_validator_takes(
        tmp_path: Path) -> None:
    """A run the caller's shorter deadline cut off is left out of the payload's uids (not the miner's fault):
    when that run was the winner (it stalled mid-stream), the payload's ``winner`` still named it, and the
    validator rejected the whole payload as malformed ("winner is not one of uids"), the other miners' answers
    unscored (the soak's mix: a few in 4,000 requests)."""
    payloads: list[dict] = []
    async with fleet(tmp_path, {1: "stall-mid", 2: "http500"}) as f, aiohttp.ClientSession() as s:
        f.ctx.payload_sinks.append(payloads.append)
        reply = await chat(s, f, {"messages": MESSAGES, "stream": True, "timeout": DEADLINE, "uids": [1, 2]})
        assert reply.headers["x-sn1-miner-uid"] == "1"
        assert_error_then_done(reply.sse_datas())  # the winner stalled until the caller's deadline
        await wait_until(lambda: bool(payloads), 3.0)
    [payload] = payloads
    taken = OrganicPayload.model_validate(payload)  # what the validator's /scoring parses each payload with
    assert taken.uids == [2] and taken.winner is None and "2" in payload["errors"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/chat/completions", {"messages": MESSAGES, "n": 2}),
    ("/v1/completions", {"prompt": MESSAGES[0]["content"], "max_tokens": 200}),
    ("/v1/responses", {"input": MESSAGES[0]["content"]}),
], ids=["chat", "chat-n2", "completions", "responses"])
async def test_a_client_leaving_mid_stream_is_charged_the_tokens_it_was_sent(tmp_path: Path, path: str,
                                                                             body: dict) -> None:
    """A caller that reads part of a streamed answer and hangs up before its end is charged its prompt and the
    answer as far as it came (an estimate: the miner's count comes last), and no error: charged nothing, any
    key could read long answers free of its daily token limit by closing each stream before ``[DONE]``."""
    async with fleet(tmp_path, {1: "stall-mid"}, options=FaultOptions(stall_after_chunks=3)) as f, \
            aiohttp.ClientSession() as s:
        headers = {"api-key": f.key}
        resp = await s.post(f.url + path, headers=headers, json={**body, "stream": True, "timeout": 60, "uids": [1]})
        assert resp.status == 200
        events = 0
        while events < 3:  # the answer has started: the stalled winner's content is coming in
            line = await asyncio.wait_for(resp.content.readline(), 5)
            events += line.startswith(b"data: {")
        resp.close()  # the caller hangs up mid-answer
        await wait_until(lambda: f.in_flight() == 0, 3.0)
        async with s.get(f.url + "/v1/usage", headers=headers) as r:
            totals = (await r.json())["totals"]
    assert totals["requests"] == 1 and totals["errors"] == 0, totals
    assert totals["prompt_tokens"] > 0 and totals["completion_tokens"] > 0, totals
