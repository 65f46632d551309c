"""A request that starts before midnight UTC and ends after, over real HTTP with the usage clock injected:
its counts land on the day that let it in, and the new day starts with its whole token limit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from shared.store.base import usage_day
from tests.helpers import Script, api_with_miners, chunk, sse

USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


async def test_a_stream_across_midnight_is_counted_on_the_day_it_started(tmp_path: Path) -> None:
    """Its request was filed on the first day (the response began then) and its tokens on the second
    (they are recorded at its end): one request split across two days, and the new day's budget
    spent by a request the old day's let in (``tokens_remaining_today`` 988 of 1000 a second past midnight)."""
    first, second = sse(chunk("Hel"), done=False), sse(chunk("lo", finish="stop", usage=USAGE))
    script = Script(steps=[(0, first[0]), (1.0, b"".join(second))])
    midnight = (time.time() // 86400 + 1) * 86400
    now = [midnight - 0.5]
    async with api_with_miners(tmp_path, {1: script}) as api, aiohttp.ClientSession() as http:
        usage = api.ctx.usage
        usage.clock = lambda: now[0]
        key, record = await api.ctx.store.create_key(100, daily_token_limit=1000)
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": True, "uids": [1]}
        async with http.post(api.url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200 and r.headers["x-ratelimit-remaining-tokens"] == "1000"
            await r.content.readline()  # the first chunk: the request is under way
            now[0] = midnight + 0.5  # the clock passes midnight while the miner still writes
            rest = (await r.read()).decode()
        assert "[DONE]" in rest
        for _ in range(50):  # its tokens are recorded as the handler ends, just after the last byte
            if usage.pending_for(record.id) and sum(c.tokens for c in usage.pending_for(record.id).values()):
                break
            await asyncio.sleep(0.02)
        await usage.flush()
        days = (await api.ctx.store.usage(record.id)).days
        before, after = usage_day(midnight - 1), usage_day(midnight)
        assert set(days) == {before}, days
        assert (days[before].requests, days[before].tokens) == (1, 12)
        async with http.get(api.url + "/v1/usage", headers=headers) as r:
            own = json.loads(await r.text())
        assert own["tokens_remaining_today"] == 1000, "the new day starts with the whole limit"
        assert [(d["date"], d["requests"], d["total_tokens"]) for d in own["days"]] == [(before, 1, 12)]
        await usage.flush()  # the usage request itself: the new day's
        assert set((await api.ctx.store.usage(record.id)).days) == {before, after}
        assert await usage.tokens_today(record.id) == 0
