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
