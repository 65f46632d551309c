"""A caller's regular expressions, run by the API on a miner's answer: a strict JSON schema's ``pattern`` (and
``patternProperties``) is matched against the answer to check that it fits. Python's ``re`` backtracks, so a
pattern such as ``^(a|aa)+$`` on 60 letters and a ``!`` takes years: one request held the API worker's event
loop (every caller's requests, its ``/health``) for as long as a model's answer let it."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from tests.helpers import Script, api_with_miners, chunk, loop_gaps, sse

# ~1.5 s (CPU) of Python's ``re`` on this pattern (it doubles about every 1.5 letters more: 60 are decades): long enough to
# be seen, short enough that the unbounded match ends while the test waits for it
LETTERS = 35
EVIL = "^(a|aa)+$"


def schema(keyword: str) -> dict:
    if keyword == "pattern":
        return {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL}}, "required": ["s"]}
    return {"type": "object", "patternProperties": {EVIL: {"type": "string"}}}


async def test_a_strict_schemas_pattern_cannot_hold_the_event_loop(tmp_path: Path) -> None:
    for keyword in ("pattern", "patternProperties"):
        text = json.dumps({"s": "a" * LETTERS + "!"} if keyword == "pattern" else {"a" * LETTERS + "!": "x"})
        miner = Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])
        body = {"messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "s", "strict": True, "schema": schema(keyword)}}}
        async with api_with_miners(tmp_path, {1: miner}) as api, aiohttp.ClientSession() as s:
            async with loop_gaps() as gaps:
                async with s.post(api.url + "/v1/chat/completions", json=body,
                                  headers={"Authorization": f"Bearer {api.key}"}) as r:
                    status = r.status
            assert max(gaps) < 0.5, (keyword, f"the event loop was held {max(gaps):.2f} s")
            # the check gives up on the caller's pattern within its bound and leaves the answer to the model
            # server, as a schema it cannot walk: the answer is the caller's
            assert status == 200, keyword
