"""``sn1_api_tokens_total{kind}``: the tokens charged to API keys, in ``/metrics``. Before, a fleet's token
throughput was nowhere but in each key's usage (a sum over every key, read from the store); a real API and a real
deterministic miner answer two chat completions, and the scrape's prompt and completion tokens are what the keys
were charged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import api_with_miners, call, post

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]


def tokens(text: str) -> dict[str, float]:
    """``{kind: count}`` of ``sn1_api_tokens_total`` in a scrape."""
    return {s.labels["kind"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "sn1_api_tokens_total"}


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200
        return tokens(await r.text())


async def test_the_tokens_charged_to_keys_are_counted_by_kind(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        assert await scrape(api.url) == {"prompt": 0.0, "completion": 0.0}  # both series, from the start
        for stream in (False, True):
            status, _, text = await post(api, {"model": "sn1/deterministic", "messages": MESSAGES, "stream": stream})
            assert status == 200, text
        for _ in range(100):  # a stream's tokens are charged as it ends, after its last byte reached the caller
            status, usage = await call(api, "GET", "/v1/usage")
            assert status == 200, usage
            totals = usage["totals"]
            if totals["prompt_tokens"] and totals["completion_tokens"] and \
                    await scrape(api.url) == {"prompt": totals["prompt_tokens"],
                                              "completion": totals["completion_tokens"]}:
                break
            await asyncio.sleep(0.05)
        scraped = await scrape(api.url)
        assert scraped == {"prompt": totals["prompt_tokens"], "completion": totals["completion_tokens"]}, (scraped,
                                                                                                          totals)
        assert scraped["prompt"] > 0 and scraped["completion"] > 0
