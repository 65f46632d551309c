"""Discovery as OpenAI clients read it (the OpenAI SDK's ``models.list()`` / ``models.retrieve()``), through the
real API and real HTTP miners: a miner this API has set aside, and ``created`` across availability refreshes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.compat.support import MODEL, fresh_cache, serves
from tests.helpers import ApiUnderTest, api_with_miners, openai_client, post

MESSAGES = [{"role": "user", "content": "hello"}]
ONLY_TWO = "only/two"  # served by uid 2 alone


async def get_json(api: ApiUnderTest, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(api.url + path, headers={"Authorization": f"Bearer {api.key}"}) as r:
        return r.status, await r.json()


async def test_a_model_whose_miners_are_set_aside_is_listed_with_none_available(tmp_path: Path) -> None:
    """uid 2 is down (its axon refuses connections): after its third failed request this API sets it aside and a
    chat for its model is a 503 ``no_miners_available``. ``/v1/models`` went on counting it: ``only/two`` with one
    available miner, ``sn1/deterministic`` with two, while a chat could reach none and one."""
    async with api_with_miners(tmp_path, {}, honest={1}, unlistened={2}) as api:
        api.ctx.availability = fresh_cache(api, {1: serves([MODEL], ["InferenceTask"]),
                                                 2: serves([MODEL, ONLY_TWO], ["InferenceTask"])})
        for _ in range(3):
            status, _, text = await post(api, {"model": ONLY_TWO, "messages": MESSAGES}, timeout=10)
            assert status == 502, text
        status, _, text = await post(api, {"model": ONLY_TWO, "messages": MESSAGES}, timeout=10)
        assert status == 503 and json.loads(text)["error"]["code"] == "no_miners_available", text

        client = openai_client(api)
        listed = {m.id: m for m in (await client.models.list()).data}
        assert set(listed) == {MODEL, ONLY_TWO}, "a miner set aside for a while: its model is still served"
        only_two = listed[ONLY_TWO].model_dump()
        assert only_two["miners"] == 0 and only_two["miners_set_aside"] == 1, only_two
        assert only_two["tasks"] == {"InferenceTask": 0}, "no miner a chat would race for it, for any task"
        shared = listed[MODEL].model_dump()
        assert shared["miners"] == 1 and shared["miners_set_aside"] == 1 and shared["tasks"] == {"InferenceTask": 1}
        assert (await client.models.retrieve(ONLY_TWO)).model_dump() == only_two, "the SDK sends only%2Ftwo"
        status, tasks = await get_json(api, "/v1/tasks")
        assert status == 200 and tasks["data"][0]["miners"] == 1 and tasks["data"][0]["miners_set_aside"] == 1, tasks
        status, _, text = await post(api, {"model": MODEL, "messages": MESSAGES}, timeout=10)
        assert status == 200, text  # what the counts said: uid 1 answers it


async def test_created_stays_put_across_availability_refreshes(tmp_path: Path) -> None:
    """``created`` was the time of the validator's last availability answer: it moved at every refresh (15 s), so a
    client caching models by ``(id, created)`` saw each model replaced four times a minute. Now it is when this API
    first saw a miner serve the model, and a model first served later is created later."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        cache = api.ctx.availability = fresh_cache(api, {1: serves([MODEL], ["InferenceTask"])})
        client = openai_client(api)
        first = (await client.models.retrieve(MODEL)).created
        await asyncio.sleep(1.1)  # created is in whole seconds
        cache.accept({1: serves([MODEL, "new/model"], ["InferenceTask"])})  # the next refresh's answer
        listed = {m.id: m.created for m in (await client.models.list()).data}
        assert listed[MODEL] == first == (await client.models.retrieve(MODEL)).created
        assert listed["new/model"] > first
        cache.accept({1: serves(["new/model"], ["InferenceTask"])})  # MODEL no longer served ...
        await asyncio.sleep(1.1)
        cache.accept({1: serves([MODEL, "new/model"], ["InferenceTask"])})  # ... and served again: new again
        assert (await client.models.retrieve(MODEL)).created > first


async def test_a_key_limited_to_some_models_is_told_of_no_other_in_tasks(tmp_path: Path) -> None:
    """``/v1/models`` listed such a key its models only, as OpenAI does, but ``/v1/tasks`` named every model served
    and counted the miners serving only models the key may not use (a chat from it could reach none of them)."""
    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}) as api:
        api.ctx.availability = fresh_cache(api, {1: serves([MODEL], ["InferenceTask", "ArithmeticTask"]),
                                                 2: serves([MODEL, "other/model"], ["InferenceTask"]),
                                                 3: serves(["other/model"], ["InferenceTask"])})
        secret, _ = await api.ctx.store.create_key(100, allowed_models=["other/model", "not/served"])
        async with aiohttp.ClientSession() as s, s.get(api.url + "/v1/tasks",
                                                       headers={"Authorization": f"Bearer {secret}"}) as r:
            assert r.status == 200
            tasks = (await r.json())["data"]
        assert [(t["id"], t["miners"], t["models"]) for t in tasks] == [("InferenceTask", 2, ["other/model"])]
        listed = (await openai_client(api, secret).models.list()).data
        assert [(m.id, m.model_dump()["miners"]) for m in listed] == [("other/model", 2)]
        status, everything = await get_json(api, "/v1/tasks")  # a key without the limit: every task and model
        assert status == 200 and [(t["id"], t["miners"]) for t in everything["data"]] == [
            ("ArithmeticTask", 1), ("InferenceTask", 3)]


async def test_retrieving_a_model_during_an_outage_is_a_503_as_its_chat_is_not_a_404(tmp_path: Path) -> None:
    """``models.retrieve()`` raised ``NotFoundError`` ("does not exist") for a model the miners serve when the
    validator's last poll found every miner down (a chat for it: a 503 ``no_miners_available``) and when the
    availability was stale (a chat for it: raced to every serving miner, answered). A client checking its model
    that way took an outage for a wrong model name. A name no miner serves stays a 404."""
    import openai

    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
        cache = api.ctx.availability = fresh_cache(api, {1: None, 2: None})  # every miner down at the last poll
        client = openai_client(api)
        status, _, text = await post(api, {"model": MODEL, "messages": MESSAGES}, timeout=10)
        assert status == 503 and json.loads(text)["error"]["code"] == "no_miners_available", text
        try:
            await client.models.retrieve(MODEL)
            raise AssertionError("retrieved")
        except openai.APIStatusError as e:
            assert e.status_code == 503 and e.body["code"] == "no_miners_available", e.body

        cache.accept({1: serves([MODEL], ["InferenceTask"]), 2: None})
        cache.refreshed_at -= 3600  # the validator gone for an hour: which models are served is not known
        status, _, text = await post(api, {"model": MODEL, "messages": MESSAGES}, timeout=10)
        assert status == 200, text
        try:
            await client.models.retrieve(MODEL)
            raise AssertionError("retrieved")
        except openai.APIStatusError as e:
            assert e.status_code == 503 and e.body["code"] == "no_miners_available", e.body
            assert "not known" in e.body["message"] and int(e.response.headers["Retry-After"]) >= 1
        try:  # a name the last availability did not list is no model, stale or not (a path or a typo)
            await client.models.retrieve("../../etc/passwd")
            raise AssertionError("retrieved")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body

        cache.accept({1: serves([MODEL], ["InferenceTask"]), 2: None})  # fresh again
        assert (await client.models.retrieve(MODEL)).id == MODEL
        try:
            await client.models.retrieve("no/such")
            raise AssertionError("retrieved")
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
