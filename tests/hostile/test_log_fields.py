"""A caller's words in the API's own log lines: each one word of its ``key=value`` line, so that a value with a
space or an ``=`` in it cannot add fields the line did not have (a forged ``uid=`` or ``key=`` read by whoever
greps the log for a miner or a key)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from tests.helpers import Script, api_with_miners, chunk, info_lines, sse


async def test_a_sessions_model_name_cannot_forge_fields_of_its_line(tmp_path: Path) -> None:
    miner = Script([(0, d) for d in sse(chunk("Hi."), chunk(finish="stop"))])
    forged = "m uid=999 key=0000000000000000"
    async with api_with_miners(tmp_path, {1: miner}) as api, aiohttp.ClientSession() as s:
        with info_lines() as lines:
            async with s.post(api.url + "/v1/sessions", json={"model": forged},
                              headers={"Authorization": f"Bearer {api.key}"}) as r:
                assert r.status == 200, await r.text()  # availability unknown: the model is taken as written
        opened = [line for line in lines if line.startswith("session ") and " opened " in line]
        assert len(opened) == 1, lines
        fields = re.findall(r" (\w+)=", opened[0])
        assert fields == ["key", "model", "uid"], opened[0]
        assert "uid=1" in opened[0].split() and "uid=999" not in opened[0].split()
