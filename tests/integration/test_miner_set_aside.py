"""Miners that advertise availability and fail every request, through a real API and real HTTP miners.

Such a miner stayed a candidate at full share, and with every miner so, ``/ready`` said 200 (``sn1_api_ready 1``)
while every chat failed. Now a miner whose last requests all failed is set aside: organic requests go to the
others, a probe asks it again after a cooldown, and when none is left ``/ready`` says so (``miners_answering``)
and a chat is a 503 at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from api.app import probe_set_aside
from api.availability import AvailabilityCache
from neurons.validator.availability import AvailabilityBook, poll_all
from tests.helpers import ApiUnderTest, Script, api_with_miners, chunk, post, sse, wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def good() -> Script:
    return Script([(0, d) for d in sse(chunk("fine"), chunk(finish="stop"))])


def down() -> Script:
    """A miner whose model server is gone: it answers every chat 503, as the reference miner's ``down`` profile."""
    return Script([], status=503)


async def get(api: ApiUnderTest, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(api.url + path) as r:
        return r.status, await r.text()


async def chat(api: ApiUnderTest) -> tuple[int, dict]:
    status, _, text = await post(api, {"messages": MESSAGES}, timeout=10)
    return status, json.loads(text)


async def test_with_every_miner_failing_ready_says_why_and_a_chat_is_a_fast_503(tmp_path: Path) -> None:
    failing = down()
    async with api_with_miners(tmp_path, {1: failing}, unlistened={2}) as api:
        status, text = await get(api, "/ready")
        assert status == 200, text  # a fresh API: nobody is known to fail yet, so it is ready (no start-up flap)
        assert json.loads(text)["checks"]["miners_answering"]["ok"] is True
        for _ in range(3):  # each races both: one answers 503, the other refuses the connection
            status, body = await chat(api)
            assert status == 502, body
        status, text = await get(api, "/ready")
        assert status == 503, text
        out = json.loads(text)
        assert out["checks"]["miners_answering"]["ok"] is False
        assert any(r.startswith("miners_answering:") and "http_5xx x1" in r and "unreachable x1" in r
                   for r in out["reasons"]), out["reasons"]
        status, text = await get(api, "/health")
        assert status == 200, text
        calls = failing.calls
        started = time.monotonic()
        status, headers, text = await post(api, {"messages": MESSAGES}, timeout=10)
        took = time.monotonic() - started
        body = json.loads(text)
        assert status == 503 and body["error"]["code"] == "no_miners_available", body
        assert 1 <= int(headers["Retry-After"]) <= 10, headers  # the next probe, within the first cooldown
        assert "set aside" in body["error"]["message"]
        assert took < 1.0, took  # refused at once, no race of miners known to fail
        assert failing.calls == calls  # and the failing miner was not asked again
        status, text = await get(api, "/metrics")
        assert 'sn1_api_ready 0.0' in text and 'sn1_api_check_ok{check="miners_answering"} 0.0' in text
        assert 'sn1_api_miners_set_aside{reason="http_5xx"} 1.0' in text
        assert 'sn1_api_miners_set_aside{reason="unreachable"} 1.0' in text


async def test_organic_traffic_leaves_a_failing_miner_and_returns_once_a_probe_finds_it_answering(
        tmp_path: Path) -> None:
    failing, answering = down(), good()
    async with api_with_miners(tmp_path, {1: failing, 2: answering}, miner_cooldown_seconds=0.5) as api:
        for _ in range(3):  # k = 5 races both; the good one answers every time
            status, body = await chat(api)
            assert status == 200, body
        assert (failing.calls, answering.calls) == (3, 3)
        for _ in range(10):
            status, body = await chat(api)
            assert status == 200, body
        assert (failing.calls, answering.calls) == (3, 13)  # set aside: organic requests went to the good one
        status, text = await get(api, "/ready")
        assert status == 200, text  # one miner still answers
        assert "1 set aside" in json.loads(text)["checks"]["miners_answering"]["detail"]

        failing.status = 200  # it comes back
        failing.steps = good().steps
        prober = asyncio.create_task(probe_set_aside(api.ctx))
        try:
            assert api.ctx.miner_health is not None
            await wait_until(lambda: not api.ctx.miner_health.records, 10)
        finally:
            prober.cancel()
        assert failing.calls == 4, failing.calls  # one probe, a one-token completion
        assert failing.bodies[-1]["max_tokens"] == 1
        for _ in range(5):
            status, body = await chat(api)
            assert status == 200, body
        assert failing.calls == 9  # back in rotation: raced again with every request


async def validator_availability(api: ApiUnderTest) -> None:
    """Give the API the availability the validator's poll learns from the miners (its own ``poll_all``)."""
    book = await poll_all(api.ctx.client, api.ctx.metagraph, AvailabilityBook(), timeout=5, concurrency=4)
    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", api.ctx.client.signer.hotkey)
    cache.accept(book.entries)
    api.ctx.availability = cache


async def test_reference_miners_in_the_down_profile_make_the_api_not_ready(tmp_path: Path) -> None:
    """The session's observation: reference miners run ``down`` (up, advertising nothing, every chat a 503).
    With the validator's availability, /ready said 200 (they answered its poll) while every chat was a 503; without
    it (the validator down or stale), each chat raced them to a 502. Both are now a 503 /ready naming the cause."""
    async with api_with_miners(tmp_path, {}, down={1, 2}) as api:
        status, _ = await get(api, "/ready")
        assert status == 200  # no availability yet, and no miner asked: nothing known against them
        for _ in range(3):  # without availability every serving miner is raced: each answers 503
            status, body = await chat(api)
            assert status == 502, body
        status, text = await get(api, "/ready")
        assert status == 503 and json.loads(text)["checks"]["miners_answering"]["ok"] is False, text
        assert "http_5xx x2" in json.loads(text)["checks"]["miners_answering"]["detail"], text

        await validator_availability(api)
        assert api.ctx.availability is not None and api.ctx.availability.entries[1] is not None  # up at the poll
        assert api.ctx.miner_health is not None
        api.ctx.miner_health.forget(1)  # what this API learnt of them is forgotten: availability alone says it
        api.ctx.miner_health.forget(2)
        status, text = await get(api, "/ready")
        assert status == 503, text
        miners = json.loads(text)["checks"]["miners"]
        assert miners["ok"] is False and "advertise no task" in miners["detail"], miners
        status, text = await get(api, "/health")
        assert status == 200, text
        started = time.monotonic()
        status, body = await chat(api)
        assert status == 503 and body["error"]["code"] == "no_miners_available", body
        assert time.monotonic() - started < 1.0


async def test_an_honest_miner_beside_a_down_one_keeps_the_api_ready_with_the_validators_availability(
        tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, down={2}) as api:
        await validator_availability(api)
        status, text = await get(api, "/ready")
        assert status == 200, text
        assert json.loads(text)["checks"]["miners"]["detail"] == "1 serving miner(s)"
        status, body = await chat(api)
        assert status == 200, body
