"""Usage by model through the real API, on a SQLite file and on Redis (``REDIS_URL``), two API processes on one
store (a fleet): ``/v1/usage``, the admin's view of a key's usage and ``sn1 keys usage`` break each day down by
the model its answers named (chat completions, streamed or not, ``n`` choices, text completions, the Responses
API), the models' tokens adding up to the day's, and a day's names past the cap counted under ``other`` for the
whole fleet."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shared.store.usage_models import MODELS_PER_DAY, OTHER
from tests.helpers import ADMIN, ApiUnderTest, Script, apis_on_one_store, call, chunk, post, sse
from tests.keys.test_cli import sn1_keys

STORES = ["sqlite", "redis"]
ASK = "Count to three, please."


def chat(model: str | None, **more: Any) -> dict[str, Any]:
    return {**({"model": model} if model is not None else {}), "messages": [{"role": "user", "content": ASK}],
            "max_tokens": 20, **more}


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, store: str) -> AsyncIterator[list[ApiUnderTest]]:
    """Two API processes on one store (one file, or one Redis namespace), each with a miner that answers any
    model (its answer names "scripted": a request that names none is told that one)."""
    miner = Script([(0, step) for step in sse(chunk("One, two, three."), chunk(finish="stop"))])
    async with apis_on_one_store(tmp_path, store, 2, miner) as apis:
        yield apis


async def ask(api: ApiUnderTest, key: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> int:
    status, _, text = await post(api, body, path=path, headers={"Authorization": f"Bearer {key}"})
    assert status < 500, text
    return status


def by_model(usage: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (today,) = usage["days"]
    return {m["model"]: m for m in today["models"]}


@pytest.mark.parametrize("store", STORES)
async def test_a_keys_day_is_broken_down_by_the_model_each_answer_named(tmp_path: Path, store: str) -> None:
    async with fleet(tmp_path, store) as (a, b):
        key = a.key  # one key, used on both hosts
        assert await ask(a, key, chat("alpha")) == 200
        assert await ask(b, key, chat("alpha", stream=True)) == 200
        assert await ask(b, key, chat("alpha", n=2)) == 200  # n choices: one request
        assert await ask(b, key, {"model": "alpha", "prompt": ASK, "max_tokens": 20}, "/v1/completions") == 200
        assert await ask(a, key, {"model": "beta", "input": ASK, "max_output_tokens": 20}, "/v1/responses") == 200
        assert await ask(a, key, chat(None)) == 200  # any model: the one the miner's answer names
        assert await ask(a, key, chat("alpha", temperature="hot")) == 400  # a request, answered by no model
        await b.ctx.usage.flush()  # b's counts are stored; a's are still in its buffer, shown by a at once

        status, usage = await call(a, "GET", "/v1/usage")
        assert status == 200, usage
        models = by_model(usage)
        assert list(models) == ["alpha", "beta", "scripted"]
        assert [models[m]["requests"] for m in models] == [4, 1, 1]
        (today,) = usage["days"]
        assert today["requests"] == 7, "the day's requests count the refused one too"
        assert sum(m["total_tokens"] for m in models.values()) == today["total_tokens"] > 0
        assert all(m["total_tokens"] == m["prompt_tokens"] + m["completion_tokens"] > 0 for m in models.values())
        assert set(usage["totals"]) == {"requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors",
                                        "rate_limited"}, "the totals are as they were"

        await a.ctx.usage.flush()
        key_id = usage["key_id"]
        status, seen = await call(b, "GET", f"/api_management/api-keys/{key_id}/usage?days=2", headers=ADMIN)
        assert status == 200, seen
        assert seen["days"][0]["models"] == usage["days"][0]["models"], "the other host, from the store, says the same"
        assert seen["days"][0]["requests"] == 8, "the /v1/usage read counted, as any request, under no model"

        code, out, err = await sn1_keys(b, "usage", key_id, "--days", "1")
        assert code == 0, err
        table = out.split("by model\n", 1)[1].splitlines()
        assert table[0].split() == ["day", "model", "requests", "prompt_tok", "completion_tok"]
        assert [row.split()[1:3] for row in table[2:]] == [["alpha", "4"], ["beta", "1"], ["scripted", "1"]]
        code, out, err = await sn1_keys(b, "--json", "usage", key_id)
        assert code == 0 and json.loads(out)["days"][-1]["models"] == usage["days"][0]["models"], err


@pytest.mark.parametrize("store", STORES)
async def test_a_days_names_past_the_cap_are_counted_under_other_for_the_whole_fleet(tmp_path: Path,
                                                                                     store: str) -> None:
    """Callers choose the model string: a key that names a new model each request adds a row a name, so a day
    holds ``MODELS_PER_DAY`` names, shared by every host, and the rest is ``other``'s, no token lost."""
    async with fleet(tmp_path, store) as (a, b):
        per_host = MODELS_PER_DAY // 2 + 4
        for i, host in enumerate((a, b)):
            statuses = await asyncio.gather(*(ask(host, a.key, chat(f"m-{i}-{j:02d}"))
                                              for j in range(per_host)))
            assert statuses == [200] * per_host
            await host.ctx.usage.flush()
        status, usage = await call(b, "GET", "/v1/usage", key=a.key)
        assert status == 200, usage
        models = by_model(usage)
        assert len(models) == MODELS_PER_DAY + 1 and list(models)[-1] == OTHER
        assert models[OTHER]["requests"] == 2 * per_host - MODELS_PER_DAY
        assert sum(m["total_tokens"] for m in models.values()) == usage["days"][0]["total_tokens"]
