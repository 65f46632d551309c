"""The fault matrix: every fault profile against the real API, alone and beside a healthy miner.

One fleet (all sixteen faults + two honest miners, real signed HTTP on
127.0.0.1) serves the whole module; each test picks its miners with ``uids``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from neurons.miner.faults import FAIL_AFTER_ANSWER_STARTS, FAULT_PROFILES, FaultOptions
from tests.chaos.fleet import HONEST, MESSAGES, Fleet, chat, expected_answer, fleet
from tests.helpers import response_events

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEADLINE = 1.5
CAP = 256 << 10
OPTIONS = FaultOptions(huge_bytes=4 << 20, late_seconds=DEADLINE + 0.5, trickle_interval=0.05)
FAULTS = sorted(FAULT_PROFILES)
PROFILES = {uid: p for uid, p in enumerate([HONEST, HONEST, *FAULTS], start=1)}
# Faults that end the request at the deadline (everything else fails fast).
SLOW_FAULTS = {"stall-headers", "stall-body", "stall-mid", "trickle", "late"}
# Every fault in both modes, except a streaming race against a fault that starts a valid answer and
# then fails: it can win (first content wins), so that is the mid-stream case, tested on its own.
CASES = [pytest.param(fault, stream, id=f"{fault}-{'stream' if stream else 'json'}")
         for fault in FAULTS for stream in (False, True) if not (stream and fault in FAIL_AFTER_ANSWER_STARTS)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Fleet, aiohttp.ClientSession]]:
    async with fleet(tmp_path_factory.mktemp("matrix"), PROFILES, options=OPTIONS,
                     miner_max_response_bytes=CAP) as f, aiohttp.ClientSession() as session:
        yield f, session


def body(uids: list[int], *, stream: bool, seed: int = 11) -> dict[str, Any]:
    return {"model": "default", "messages": MESSAGES, "uids": uids, "stream": stream, "seed": seed,
            "timeout": DEADLINE}


def assert_openai_error(text: str) -> dict[str, Any]:
    err = json.loads(text)["error"]
    assert set(err) == {"message", "type", "code", "param"}
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.mark.parametrize(("fault", "stream"), CASES)
async def test_healthy_miner_beside_a_fault_gives_the_healthy_answer(chaos, fault: str, stream: bool) -> None:
    f, session = chaos
    healthy = f.uids(HONEST)[0]
    reply = await chat(session, f, body([f.uids(fault)[0], healthy], stream=stream, seed=len(fault)))
    assert reply.status == 200, reply.text
    assert reply.headers["x-sn1-miner-uid"] == str(healthy)
    assert reply.content() == expected_answer(len(fault))
    if stream:
        assert reply.sse_datas()[-1] == "[DONE]"
        assert not any('"error"' in d for d in reply.sse_datas())


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_one_healthy_miner_among_all_faults_answers(chaos, stream: bool) -> None:
    f, session = chaos
    faults = [uid for uid, p in f.profiles.items() if p != HONEST and not (stream and p in FAIL_AFTER_ANSWER_STARTS)]
    healthy = f.uids(HONEST)[1]
    for seed in range(3):
        reply = await chat(session, f, body([*faults, healthy], stream=stream, seed=100 + seed))
        assert reply.status == 200, reply.text
        assert reply.headers["x-sn1-miner-uid"] == str(healthy)
        assert reply.content() == expected_answer(100 + seed)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_responses_api_gets_the_healthy_answer_among_all_faults(chaos, stream: bool) -> None:
    f, session = chaos
    faults = [uid for uid, p in f.profiles.items() if p != HONEST and not (stream and p in FAIL_AFTER_ANSWER_STARTS)]
    healthy = f.uids(HONEST)[1]
    request = body([*faults, healthy], stream=stream, seed=200)
    request["input"] = request.pop("messages")
    reply = await chat(session, f, request, path="/v1/responses")
    assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == str(healthy), reply.text
    if stream:
        events = response_events(reply.text)
        assert events[-1]["type"] == "response.completed"
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    else:
        text = json.loads(reply.text)["output"][0]["content"][0]["text"]
    assert text == expected_answer(200)
    only_faults = await chat(session, f, {**request, "uids": [f.uids("bad-json")[0]]}, path="/v1/responses")
    assert only_faults.status == 502 and assert_openai_error(only_faults.text)["code"] == "no_valid_answer"


@pytest.mark.parametrize(("fault", "stream"), CASES)
async def test_only_a_fault_is_502_or_504_within_the_deadline(chaos, fault: str, stream: bool) -> None:
    f, session = chaos
    reply = await chat(session, f, body(f.uids(fault), stream=stream))
    assert reply.elapsed < DEADLINE + 1, f"{fault} held the request {reply.elapsed:.2f}s"
    expected = 504 if fault in SLOW_FAULTS else 502
    assert reply.status == expected, reply.text
    err = assert_openai_error(reply.text)
    assert err["code"] == ("deadline_exceeded" if expected == 504 else "no_valid_answer")


async def test_all_faults_together_are_504_within_the_deadline(chaos) -> None:
    f, session = chaos
    reply = await chat(session, f, body([uid for uid, p in f.profiles.items() if p != HONEST], stream=False))
    assert reply.status == 504, reply.text
    assert reply.elapsed < DEADLINE + 1
    assert assert_openai_error(reply.text)["code"] == "deadline_exceeded"


async def test_huge_answer_is_cut_at_the_cap_and_named_in_the_error(chaos) -> None:
    f, session = chaos
    reply = await chat(session, f, body(f.uids("huge"), stream=False))
    assert reply.status == 502
    assert f"larger than {CAP} bytes" in assert_openai_error(reply.text)["message"]
