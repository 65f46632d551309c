"""What a miner says it serves is taken within bounds, by the validator's poll and by the API.

A miner is untrusted. Its availability answer's model and task names were taken as sent: the API's
``/v1/models`` catalogue is models x tasks per miner, rebuilt per call, so one miner listing 3,000
models and 300 tasks (60 KB) cost each call 0.2 s of an API worker's CPU, and one of a few MB froze the
workers for hours; a name with a line break reached every caller's model list and the API's log lines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from api.availability import AvailabilityCache
from neurons.validator.availability import AvailabilityBook, poll_all
from shared.miner_client import MinerClient, make_session
from shared.protocol import MAX_ADVERTISED_MODELS, MAX_ADVERTISED_TASKS
from shared.signing import Signer
from tests.helpers import VALIDATOR_KP, api_with_miners, serve_app, snapshot
from tests.validator.test_app import MINERS, VALIDATOR, _view

FORGED = "sn1/forged\n2026-12-06 12:00:00.000 | ERROR    | api | FORGED"


def huge_entry() -> dict[str, Any]:
    models = {FORGED: True, "x" * 10_000: True, **{f"model-{i}": True for i in range(3000)}}
    tasks = {"InferenceTask": True, "Task\r\nForged": True, **{f"task-{i}": True for i in range(300)}}
    return {"task_availabilities": tasks, "llm_model_availabilities": models}


def bounded(entry: dict[str, Any] | None) -> None:
    assert entry is not None
    models, tasks = entry["llm_model_availabilities"], entry["task_availabilities"]
    assert len(models) <= MAX_ADVERTISED_MODELS and len(tasks) <= MAX_ADVERTISED_TASKS, (len(models), len(tasks))
    assert all(name.isprintable() and len(name) <= 256 for name in [*models, *tasks])
    assert "model-0" in models and "InferenceTask" in tasks  # the first ones, in the miner's order, are kept


async def test_the_validator_keeps_a_bounded_availability_of_a_miner() -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(huge_entry())

    app = web.Application()
    app.router.add_post("/availability", answer)
    async with serve_app(app) as url, make_session() as session:
        snap = snapshot(VALIDATOR.ss58_address, {1: (MINERS[1].ss58_address, url.removeprefix("http://"))})
        book = await poll_all(MinerClient(session, Signer(VALIDATOR)), _view(snap), AvailabilityBook(),
                              timeout=10, concurrency=4)
    bounded(book.entries[1])


async def test_the_api_lists_a_bounded_catalogue_of_a_miner(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({str(uid): huge_entry() for uid in (1, 2, 3)})

    validator = web.Application()
    validator.router.add_post("/miner_availabilities/miner_availabilities", answer)
    async with serve_app(validator) as validator_url, api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        api.ctx.availability = AvailabilityCache(api.ctx.client, validator_url, VALIDATOR_KP.ss58_address)
        assert await api.ctx.availability.refresh()
        for uid in (1, 2, 3):
            bounded(api.ctx.availability.entries[uid])
        async with aiohttp.ClientSession() as s:
            started = time.perf_counter()
            async with s.get(api.url + "/v1/models", headers={"Authorization": f"Bearer {api.key}"}) as r:
                listed = await r.json()
            took = time.perf_counter() - started
    names = [m["id"] for m in listed["data"]]
    assert len(names) <= MAX_ADVERTISED_MODELS and FORGED not in names, len(names)
    assert all(len(m["tasks"]) <= MAX_ADVERTISED_TASKS for m in listed["data"])
    assert took < 2, f"/v1/models took {took:.2f} s"
