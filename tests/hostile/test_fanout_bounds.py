"""What one request may make the API ask of the miners: a key's limits count requests, so a request that fans out
to more miners than any single race may ask (``uids``'s bound) turned one charged request into that many times
the work, signed by the validator's hotkey, at miners that may throttle that hotkey for everyone."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from shared.protocol import MAX_UIDS
from tests.chaos.fleet import HONEST, MESSAGES, fleet

MINERS = 33  # x n = 8: 264 miner requests, past the 256 one race may name


async def miner_answers(s: aiohttp.ClientSession, url: str) -> float:
    """Every answer the API had from a miner, as ``/metrics`` counts them."""
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    return sum(float(v) for v in re.findall(r"^sn1_api_miner_answer_seconds_count\{[^}]*\} (\S+)$", text, re.M))


async def test_n_times_named_uids_may_not_pass_what_one_race_may_name(tmp_path: Path) -> None:
    uids = list(range(1, MINERS + 1))
    assert 8 * len(uids) > MAX_UIDS >= len(uids)
    async with fleet(tmp_path, dict.fromkeys(uids, HONEST)) as f, aiohttp.ClientSession() as s:
        headers = {"Authorization": f"Bearer {f.key}"}
        for path, body, param in (("/v1/chat/completions", {"messages": MESSAGES, "n": 8, "uids": uids}, "n"),
                                  ("/v1/completions", {"prompt": ["a", "b", "c", "d"], "n": 2, "uids": uids}, "n"),
                                  ("/v1/completions", {"prompt": ["a"] * 8, "uids": uids}, "prompt")):
            before = await miner_answers(s, f.url)
            async with s.post(f.url + path, json=body, headers=headers) as r:
                status, answer = r.status, await r.json()
            assert status == 400, (path, status, str(answer)[:200])
            assert answer["error"]["param"] == param and answer["error"]["code"] == "invalid_value", answer
            assert str(MAX_UIDS) in answer["error"]["message"], answer
            assert await miner_answers(s, f.url) == before, "refused before any miner is asked"
        # Within the bound, every named miner is still asked, for each choice.
        async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "n": 7, "uids": uids},
                          headers=headers) as r:
            assert r.status == 200 and len((await r.json())["choices"]) == 7
