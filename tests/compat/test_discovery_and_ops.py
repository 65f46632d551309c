"""Discovery (/v1/models, /v1/tasks), /ready, /metrics and the API description, through the real API app."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from api.app import create_api_app
from api.openapi import routes_of
from tests.compat.support import MODEL, fresh_cache, sample, serves
from tests.helpers import ApiUnderTest, api_with_miners, post

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        api.ctx.availability = fresh_cache(api, {
            1: serves([MODEL], ["InferenceTask", "ArithmeticTask"]),
            2: serves([MODEL, "other/model"], ["InferenceTask"]),
            3: None,  # did not answer the last poll
            7: serves(["ghost/model"], ["InferenceTask"]),  # not in the metagraph: never listed
        })
        yield api


async def get(api: ApiUnderTest, path: str, *, key: str | None = "default", **kw) -> tuple[int, dict, str]:
    headers = {} if key is None else {"Authorization": f"Bearer {api.key if key == 'default' else key}"}
    async with aiohttp.ClientSession() as s, s.get(api.url + path, headers=headers, **kw) as r:
        return r.status, dict(r.headers), (await r.read()).decode(errors="replace")


async def get_json(api: ApiUnderTest, path: str, **kw) -> tuple[int, dict]:
    status, _, text = await get(api, path, **kw)
    return status, json.loads(text)


async def test_models_list_is_openai_shaped_and_counts_available_miners(api: ApiUnderTest) -> None:
    status, body = await get_json(api, "/v1/models")
    assert status == 200 and body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {MODEL, "other/model"}, "only models of available miners in the metagraph"
    assert by_id[MODEL]["object"] == "model" and by_id[MODEL]["miners"] == 2
    assert by_id[MODEL]["tasks"] == {"ArithmeticTask": 1, "InferenceTask": 2}
    status, one = await get_json(api, "/v1/models/" + MODEL)
    assert status == 200 and one == by_id[MODEL]


async def test_a_key_limited_to_some_models_is_listed_those_only(api: ApiUnderTest) -> None:
    """As OpenAI lists a key's models: listed, the others drew a 403 model_not_allowed when used."""
    secret, _ = await api.ctx.store.create_key(100, allowed_models=["other/model", "not/served"])
    status, body = await get_json(api, "/v1/models", key=secret)
    assert status == 200 and [m["id"] for m in body["data"]] == ["other/model"]
    assert (await get_json(api, "/v1/models/" + MODEL, key=secret))[0] == 404
    assert (await get_json(api, "/v1/models/other/model", key=secret))[0] == 200


async def test_unknown_model_is_404_and_no_key_is_401(api: ApiUnderTest) -> None:
    status, body = await get_json(api, "/v1/models/no/such")
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    status, body = await get_json(api, "/v1/models", key=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_the_default_model_is_any_model_as_a_chat_takes_it(api: ApiUnderTest) -> None:
    """``default`` means any model in a request (README), so the OpenAI SDK's ``models.retrieve("default")``, a
    client checking the model it is about to use, was a 404 model_not_found for the one name every chat takes.
    It is "any model" now: the miners a chat for it would race, per task too; refused to a key limited to some
    models, as a chat for it is; and as a chat is told when nothing is served."""
    status, body = await get_json(api, "/v1/models/default")
    assert status == 200, body
    assert body["id"] == "default" and body["object"] == "model" and body["owned_by"] == "sn1"
    assert body["miners"] == 2 and body["miners_set_aside"] == 0, "miners 1 and 2 serve a model, each counted once"
    assert body["tasks"] == {"ArithmeticTask": 1, "InferenceTask": 2}
    assert body["created"] == min(m["created"] for m in (await get_json(api, "/v1/models"))[1]["data"])
    secret, _ = await api.ctx.store.create_key(100, allowed_models=["other/model"])
    status, body = await get_json(api, "/v1/models/default", key=secret)
    assert status == 403 and body["error"]["code"] == "model_not_allowed", body
    api.ctx.availability = fresh_cache(api, {1: None, 2: None, 3: None})  # every miner down at the last poll
    status, body = await get_json(api, "/v1/models/default")
    assert status == 503 and body["error"]["code"] == "no_miners_available", body
    api.ctx.availability.refreshed_at = time.monotonic() - 3600  # no fresh availability: not known, as any model's
    status, headers, text = await get(api, "/v1/models/default")
    assert status == 503 and "Retry-After" in headers and "any model is not known now" in text, text


async def test_tasks_list_counts_miners_per_task(api: ApiUnderTest) -> None:
    status, body = await get_json(api, "/v1/tasks")
    assert status == 200
    tasks = {t["id"]: t for t in body["data"]}
    assert tasks["InferenceTask"]["miners"] == 2 and tasks["ArithmeticTask"]["miners"] == 1
    assert tasks["InferenceTask"]["models"] == sorted([MODEL, "other/model"])


async def test_stale_availability_lists_nothing_and_is_a_readiness_warning(api: ApiUnderTest) -> None:
    """A validator down for a while: the API still serves (every registered miner is a candidate), so
    /ready stays 200 with a warning; a 503 would take every API host of a fleet out of rotation."""
    status, body = await get_json(api, "/ready", key=None)
    assert status == 200 and body["ready"] is True and body["reasons"] == [] and body["warnings"] == []
    api.ctx.availability.refreshed_at = time.monotonic() - 3600
    status, body = await get_json(api, "/v1/models")
    assert status == 200 and body["data"] == []
    status, body = await get_json(api, "/ready", key=None)
    assert status == 200 and body["ready"] is True and body["reasons"] == []
    assert [r.split(":")[0] for r in body["warnings"]] == ["validator"]
    assert body["checks"]["validator"] == {"ok": False, "required": False, "detail": body["checks"]["validator"]["detail"]}
    status, _, text = await post(api, {"model": MODEL, "messages": MESSAGES})
    assert status == 200, text


async def ready_metrics(api: ApiUnderTest) -> tuple[float, dict[str, float]]:
    """``sn1_api_ready`` and each ``sn1_api_check_ok{check}``, as a scrape reads them."""
    _, _, text = await get(api, "/metrics", key=None)
    checks = {c: sample(text, "sn1_api_check_ok", check=c) for c in re.findall(r'sn1_api_check_ok\{check="(\w+)"', text)}
    return sample(text, "sn1_api_ready"), checks


async def test_ready_is_503_with_a_reason_when_no_miner_serves(api: ApiUnderTest) -> None:
    """And /metrics says so (an alert had only the validator's readiness to go on): ready 0, the miners check 0."""
    ready, checks = await ready_metrics(api)
    assert ready == 1 and set(checks) == {"metagraph", "store", "eviction", "outbox", "validator", "miners",
                                          "miners_answering", "permit"} and all(v == 1 for v in checks.values()), checks
    api.ctx.availability.entries = {1: None, 2: None, 3: None}
    status, body = await get_json(api, "/ready", key=None)
    assert status == 503 and any(r.startswith("miners:") for r in body["reasons"])
    status, _, _ = await get(api, "/health", key=None)
    assert status == 200, "/health stays a liveness check"
    ready, checks = await ready_metrics(api)
    assert ready == 0 and checks["miners"] == 0 and checks["store"] == 1, checks


async def test_ready_is_503_when_the_key_store_cannot_take_a_write(api: ApiUnderTest) -> None:
    """Its ping was SELECT 1, which needs neither the file nor its lock: /ready said ready while another
    process's lock on the SQLite file made every authenticated request a 503."""
    import sqlite3

    holder = sqlite3.connect(api.ctx.store.path, isolation_level=None, timeout=0.1)  # another process's lock
    holder.execute("BEGIN EXCLUSIVE")
    try:
        status, body = await get_json(api, "/ready", key=None)
        assert status == 503 and any(r.startswith("store:") for r in body["reasons"]), body
        assert (await get(api, "/v1/models"))[0] == 503, "what /ready foretold"
        ready, checks = await ready_metrics(api)
        assert ready == 0 and checks["store"] == 0 and checks["miners"] == 1, "what an alert reads"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    status, body = await get_json(api, "/ready", key=None)
    assert status == 200, body
    assert (await ready_metrics(api))[0] == 1


async def test_metrics_move_with_traffic(api: ApiUnderTest) -> None:
    _, _, before = await get(api, "/metrics", key=None)
    for _ in range(2):
        status, _, text = await post(api, {"model": MODEL, "messages": MESSAGES})
        assert status == 200, text
    await get(api, "/v1/models/no/such")
    secret, _ = await api.ctx.store.create_key(1)
    assert (await get(api, "/v1/tasks", key=secret))[0] == 200
    assert (await get(api, "/v1/tasks", key=secret))[0] == 429
    deadline = time.monotonic() + 10
    while True:  # wins and answer latencies are recorded once each fan-out has settled
        status, headers, text = await get(api, "/metrics", key=None)
        if sum(sample(text, "sn1_api_miner_wins_total", uid=u) for u in "123") >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert sample(before, "sn1_api_http_requests_total", status="200", **chat) == 0
    assert sample(text, "sn1_api_http_requests_total", status="200", **chat) == 2
    assert sample(text, "sn1_api_http_request_duration_seconds_count", **chat) == 2
    assert sample(text, "sn1_api_http_requests_total", route="/v1/models/{model}", status="404") == 1
    assert sample(text, "sn1_api_rate_limited_total", route="/v1/tasks") == 1
    assert sum(sample(text, "sn1_api_miner_wins_total", uid=u) for u in "123") == 2
    assert sum(sample(text, "sn1_api_miner_answer_seconds_count", uid=u) for u in "123") >= 2
    assert sample(text, "sn1_api_serving_miners") == 3
    assert "/no/such" not in text, "route patterns, never raw paths, as labels"


async def test_openapi_covers_every_route_and_docs_are_served_locally(api: ApiUnderTest) -> None:
    status, doc = await get_json(api, "/openapi.json", key=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    twin = create_api_app(api.ctx, run_background=False)  # the same routes table as the app under test
    app_routes = {(m.lower(), p) for m, p, _ in routes_of(twin)}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert app_routes and app_routes <= documented
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["required"]
    assert chat["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert {"bearer", "apiKeyHeader", "adminKey"} <= set(doc["components"]["securitySchemes"])
    status, _, page = await get(api, "/docs", key=None)
    assert status == 200 and "/openapi.json" in page and "swagger-ui-bundle.js" in page
    assert not re.search(r"(src|href)=\"https?://", page), "no CDN: every asset is served by the API"
    for asset in re.findall(r"(?:src|href)=\"(/docs/assets/[^\"]+)\"", page):
        status, headers, body = await get(api, asset, key=None)
        assert status == 200 and len(body) > 100, asset
    assert (await get(api, "/docs/assets/..%2f..%2fsecrets", key=None))[0] == 404


async def test_a_workers_gauges_stay_fresh_between_scrapes(api: ApiUnderTest) -> None:
    """With WORKERS > 1 a scrape merges every worker's values, but only the worker answering it sampled:
    the others' gauges were as old as their last scrape."""
    import asyncio

    from api.ops import sample_forever
    from shared.metrics import ApiMetrics

    metrics = ApiMetrics()
    api.ctx.metagraph.snapshot = api.ctx.metagraph.snapshot.__class__(
        netuid=api.ctx.metagraph.snapshot.netuid, block=api.ctx.metagraph.snapshot.block,
        neurons=api.ctx.metagraph.snapshot.neurons, fetched_at=time.monotonic() - 3600)
    task = asyncio.create_task(sample_forever(api.ctx, metrics, every=0.02))
    await asyncio.sleep(0.2)  # no scrape in between
    task.cancel()
    assert metrics.metagraph_age._value.get() >= 3599



async def test_a_worker_samples_its_gauges_as_it_starts(api: ApiUnderTest) -> None:
    """With WORKERS > 1 a worker that had not sampled yet (its first sample came after 5 s) held ``sn1_api_ready``
    at 0: every restart's first scrapes read the host not ready, while every ``check_ok`` was 1."""
    import asyncio

    from api.ops import sample_forever
    from shared.metrics import ApiMetrics

    metrics = ApiMetrics()
    assert (await get_json(api, "/ready", key=None))[0] == 200
    task = asyncio.create_task(sample_forever(api.ctx, metrics, every=3600))
    try:
        for _ in range(100):
            if metrics.ready._value.get() == 1:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert metrics.ready._value.get() == 1

async def test_an_api_hotkey_without_a_validator_permit_is_a_readiness_warning(
        api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrong wallet in .env.api, or a validator that has not earned its permit: every miner answers 403 and
    the callers see 502s. /ready says why (a warning: miners may allow-list the hotkey), and so does the start."""
    status, body = await get_json(api, "/ready", key=None)
    assert body["checks"]["permit"]["ok"] is True and body["warnings"] == []
    monkeypatch.setattr(api.ctx.client.signer, "hotkey", "5NoPermitHotkeyxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")
    status, body = await get_json(api, "/ready", key=None)
    assert status == 200 and body["ready"] is True and body["reasons"] == []
    (warning,) = body["warnings"]
    assert warning.startswith("permit: this API's hotkey 5NoPermit") and "ALLOWED_HOTKEYS" in warning
    assert body["checks"]["permit"]["required"] is False
