"""An API host whose clock is off, against real signed miners over 127.0.0.1: every miner refuses it
(401 StaleRequest), and its operator must hear why at WARNING, not only from callers' 502s."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from loguru import logger

from shared.signing import Signer
from tests.helpers import VALIDATOR_KP, api_with_miners

CHAT = {"model": "sn1/deterministic", "messages": [{"role": "user", "content": "hi"}]}


async def test_an_api_whose_clock_is_behind_is_one_warning_a_minute_naming_the_offset(tmp_path: Path) -> None:
    """It logged a DEBUG line per miner and an INFO ``status=error`` per request: nothing at WARNING said
    that every miner refused this host's signature, or that a clock 30 s behind was why."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        async with api_with_miners(tmp_path, {}, honest={1, 2}) as api, aiohttp.ClientSession() as http:
            api.ctx.client.signer = Signer(VALIDATOR_KP, clock=lambda: time.time_ns() - 30 * 10**9)
            for _ in range(3):
                async with http.post(api.url + "/v1/chat/completions", json=CHAT,
                                     headers={"Authorization": f"Bearer {api.key}"}) as r:
                    assert r.status == 502 and "StaleRequest" in await r.text()
    finally:
        logger.remove(sink)
    told = [line for line in lines if line.startswith("miners refuse this host's signed requests")]
    assert len(told) == 1, "one a minute, not one per request or miner"
    assert f"(hotkey {VALIDATOR_KP.ss58_address})" in told[0] and "HTTP 401 StaleRequest: nonce is 30." in told[0]
    assert "s old, past the 10s freshness window" in told[0] and "NTP" in told[0]
