"""Miners that advertise availability and fail every request, through a real API and real HTTP miners.

Such a miner stayed a candidate at full share, and with every miner so, ``/ready`` said 200 (``sn1_api_ready 1``)
while every chat failed. Now a miner whose last requests all failed is set aside: organic requests go to the
others, a probe asks it again after a cooldown, and when none is left ``/ready`` says so (``miners_answering``)
and a chat is a 503 at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from api.app import probe_set_aside
from api.availability import AvailabilityCache
from neurons.validator.availability import AvailabilityBook, poll_all
from tests.helpers import ApiUnderTest, Script, api_with_miners, chunk, post, sse, wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def good() -> Script:
    return Script([(0, d) for d in sse(chunk("fine"), chunk(finish="stop"))])


def down() -> Script:
    """A miner whose model server is gone: it answers every chat 503, as the reference miner's ``down`` profile."""
    return Script([], status=503)


async def get(api: ApiUnderTest, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(api.url + path) as r:
        return r.status, await r.text()


async def chat(api: ApiUnderTest) -> tuple[int, dict]:
    status, _, text = await post(api, {"messages": MESSAGES}, timeout=10)
    return status, json.loads(text)


async def test_with_every_miner_failing_ready_says_why_and_a_chat_is_a_fast_503(tmp_path: Path) -> None:
    failing = down()
    async with api_with_miners(tmp_path, {1: failing}, unlistened={2}) as api:
        status, text = await get(api, "/ready")
        assert status == 200, text  # a fresh API: nobody is known to fail yet, so it is ready (no start-up flap)
        assert json.loads(text)["checks"]["miners_answering"]["ok"] is True
        for _ in range(3):  # each races both: one answers 503, the other refuses the connection
            status, body = await chat(api)
            assert status == 502, body
        status, text = await get(api, "/ready")
        assert status == 503, text
        out = json.loads(text)
        assert out["checks"]["miners_answering"]["ok"] is False
        assert any(r.startswith("miners_answering:") and "http_5xx x1" in r and "unreachable x1" in r
                   for r in out["reasons"]), out["reasons"]
        status, text = await get(api, "/health")
        assert status == 200, text
        calls = failing.calls
        started = time.monotonic()
        status, headers, text = await post(api, {"messages": MESSAGES}, timeout=10)
        took = time.monotonic() - started
        body = json.loads(text)
        assert status == 503 and body["error"]["code"] == "no_miners_available", body
        assert 1 <= int(headers["Retry-After"]) <= 10, headers  # the next probe, within the first cooldown
        assert "set aside" in body["error"]["message"]
        assert took < 1.0, took  # refused at once, no race of miners known to fail
        assert failing.calls == calls  # and the failing miner was not asked again
        status, text = await get(api, "/metrics")
        assert 'sn1_api_ready 0.0' in text and 'sn1_api_check_ok{check="miners_answering"} 0.0' in text
        assert 'sn1_api_miners_set_aside{reason="http_5xx"} 1.0' in text
        assert 'sn1_api_miners_set_aside{reason="unreachable"} 1.0' in text


async def test_organic_traffic_leaves_a_failing_miner_and_returns_once_a_probe_finds_it_answering(
        tmp_path: Path) -> None:
    failing, answering = down(), good()
    async with api_with_miners(tmp_path, {1: failing, 2: answering}, miner_cooldown_seconds=0.5) as api:
        for _ in range(3):  # k = 5 races both; the good one answers every time
            status, body = await chat(api)
            assert status == 200, body
        assert (failing.calls, answering.calls) == (3, 3)
        for _ in range(10):
            status, body = await chat(api)
            assert status == 200, body
        assert (failing.calls, answering.calls) == (3, 13)  # set aside: organic requests went to the good one
        status, text = await get(api, "/ready")
        assert status == 200, text  # one miner still answers
        assert "1 set aside" in json.loads(text)["checks"]["miners_answering"]["detail"]

        failing.status = 200  # it comes back
        failing.steps = good().steps
        prober = asyncio.create_task(probe_set_aside(api.ctx))
        try:
            assert api.ctx.miner_health is not None
            await wait_until(lambda: not api.ctx.miner_health.records, 10)
        finally:
            prober.cancel()
        assert failing.calls == 4, failing.calls  # one probe, a one-token completion
        assert failing.bodies[-1]["max_tokens"] == 1
        for _ in range(5):
            status, body = await chat(api)
            assert status == 200, body
        assert failing.calls == 9  # back in rotation: raced again with every request


async def validator_availability(api: ApiUnderTest) -> None:
    """Give the API the availability the validator's poll learns from the miners (its own ``poll_all``)."""
    book = await poll_all(api.ctx.client, api.ctx.metagraph, AvailabilityBook(), timeout=5, concurrency=4)
    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", api.ctx.client.signer.hotkey)
    cache.accept(book.entries)
    api.ctx.availability = cache


async def test_reference_miners_in_the_down_profile_make_the_api_not_ready(tmp_path: Path) -> None:
    """The session's observation: reference miners run ``down`` (up, advertising nothing, every chat a 503).
    With the validator's availability, /ready said 200 (they answered its poll) while every chat was a 503; without
    it (the validator down or stale), each chat raced them to a 502. Both are now a 503 /ready naming the cause."""
    async with api_with_miners(tmp_path, {}, down={1, 2}) as api:
        status, _ = await get(api, "/ready")
        assert status == 200  # no availability yet, and no miner asked: nothing known against them
        for _ in range(3):  # without availability every serving miner is raced: each answers 503
            status, body = await chat(api)
            assert status == 502, body
        status, text = await get(api, "/ready")
        assert status == 503 and json.loads(text)["checks"]["miners_answering"]["ok"] is False, text
        assert "http_5xx x2" in json.loads(text)["checks"]["miners_answering"]["detail"], text

        await validator_availability(api)
        assert api.ctx.availability is not None and api.ctx.availability.entries[1] is not None  # up at the poll
        assert api.ctx.miner_health is not None
        api.ctx.miner_health.forget(1)  # what this API learnt of them is forgotten: availability alone says it
        api.ctx.miner_health.forget(2)
        status, text = await get(api, "/ready")
        assert status == 503, text
        miners = json.loads(text)["checks"]["miners"]
        assert miners["ok"] is False and "advertise no task" in miners["detail"], miners
        status, text = await get(api, "/health")
        assert status == 200, text
        started = time.monotonic()
        status, body = await chat(api)
        assert status == 503 and body["error"]["code"] == "no_miners_available", body
        assert time.monotonic() - started < 1.0


async def test_an_honest_miner_beside_a_down_one_keeps_the_api_ready_with_the_validators_availability(
        tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, down={2}) as api:
        await validator_availability(api)
        status, text = await get(api, "/ready")
        assert status == 200, text
        assert json.loads(text)["checks"]["miners"]["detail"] == "1 serving miner(s)"
        status, body = await chat(api)
        assert status == 200, body


def not_serving() -> Script:
    """A miner up and answering, that does not serve the model asked for: OpenAI's 404, as a model server says it."""
    return Script([], status=404, error_code="model_not_found")


def fresh_availability(api: ApiUnderTest, models: dict[int, list[str]]) -> None:
    """Fresh availability from the validator: each uid serves ``InferenceTask`` and its ``models``."""
    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", api.ctx.client.signer.hotkey)
    cache.accept({uid: {"task_availabilities": {"InferenceTask": True},
                        "llm_model_availabilities": dict.fromkeys(served, True)} for uid, served in models.items()})
    api.ctx.availability = cache


async def set_uid_1_aside(api: ApiUnderTest, model: str) -> None:
    """Three requests for ``model`` that uid 1 fails (503) while the others say they do not serve it: a 502 each
    (one miner failed on its own, and might have served it), and uid 1 is set aside."""
    for _ in range(3):
        status, _, text = await post(api, {"model": model, "messages": MESSAGES}, timeout=10)
        assert status == 502, text
    assert api.ctx.miner_health is not None and 1 in api.ctx.miner_health.aside


async def test_a_model_whose_miners_are_set_aside_is_a_503_not_openais_404(tmp_path: Path) -> None:
    """uid 1 serves the model and fails every request; uids 2 and 3 answer ``404 model_not_found`` for it. Once
    uid 1 was set aside, each request raced 2 and 3 alone, and the caller was told its model does not exist (an app
    developer fixes a model name that is right, and the SDKs raise ``NotFoundError``, which nobody retries). It is
    the 503 of every miner set aside: the model's miners are failing, and Retry-After says when one is probed."""
    from tests.integration.test_race import ASKING_FOR_GONE_MODEL

    failing, others = down(), {2: not_serving(), 3: not_serving()}
    async with api_with_miners(tmp_path, {1: failing, **others}) as api:  # no availability: every miner is raced
        await set_uid_1_aside(api, "gone/model")
        told = api.ctx.no_answer.failures  # the "requests no miner answers" WARNING run's count (the 502s began it)
        for path, body in [*ASKING_FOR_GONE_MODEL, ("/v1/chat/completions", {**ASKING_FOR_GONE_MODEL[0][1],
                                                                               "mixture": True})]:
            status, headers, text = await post(api, body, path=path, timeout=10)
            error = json.loads(text)["error"]
            assert status == 503 and error["code"] == "no_miners_available", (path, body, text)
            assert 1 <= int(headers.get("Retry-After", 0)) <= 10, (path, body, headers)
            assert "set aside" in error["message"] and "http_5xx x1" in error["message"], error
            assert "2 miner(s) asked do not serve the model `gone/model`" in error["message"], error
        assert failing.calls == 3  # the failing miner was not raced again
        # an outage of the model's miners, told as selection's 503 is, once per request (the mixture's too, from its
        # first stage: it was told by neither)
        assert api.ctx.no_answer.failures == told + len(ASKING_FOR_GONE_MODEL) + 1

        # a caller naming its miners gets their answer: those it named do not serve the model
        status, _, text = await post(api, {"model": "gone/model", "messages": MESSAGES, "uids": [2, 3]})
        assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found", text


@pytest.mark.parametrize("stream", [False, True], ids=["object", "streamed"])
@pytest.mark.parametrize("failover", [False, True])
async def test_a_session_for_a_model_whose_miners_are_set_aside_is_the_503_not_a_404(tmp_path: Path, failover: bool,
                                                                                      stream: bool) -> None:
    """A sticky session (``POST /v1/sessions``) for the model of uid 1, set aside for failing, pins uid 2 or 3,
    which answer ``404 model_not_found`` for it: its chat is the 503 ``no_miners_available`` of a plain request
    for that model, with its Retry-After, not OpenAI's 404 of a model nobody serves (an SDK's NotFoundError, never
    retried), with or without failover; the session, pinned to a miner that does not serve its model, is closed."""
    failing, others = down(), {2: not_serving(), 3: not_serving()}
    async with api_with_miners(tmp_path, {1: failing, **others}) as api:  # no availability: every miner is raced
        await set_uid_1_aside(api, "gone/model")
        status, _, text = await post(api, {"model": "gone/model", "failover": failover}, path="/v1/sessions")
        assert status == 200 and json.loads(text)["uid"] in others, text  # selection leaves uid 1 out
        session = json.loads(text)
        status, headers, text = await post(api, {"messages": MESSAGES, "stream": stream}, timeout=10)
        error = json.loads(text)["error"]
        assert status == 503 and error["code"] == "no_miners_available", text
        assert 1 <= int(headers.get("Retry-After", 0)) <= 10, headers
        assert "set aside" in error["message"] and "http_5xx x1" in error["message"], error
        assert "do not serve the model `gone/model`" in error["message"], error
        assert headers["x-sn1-session-id"] == session["session_id"]
        assert failing.calls == 3, "the failing miner was not asked again"
        assert sum(s.calls for s in others.values()) == 6 + (2 if failover else 1)  # the pinned one, its replacement
        async with aiohttp.ClientSession(headers={"api-key": api.key}) as s, s.get(api.url + "/v1/sessions") as r:
            assert r.status == 404, "the session was closed"


async def test_with_fresh_availability_only_the_miners_listing_the_model_make_it_a_503(tmp_path: Path) -> None:
    """Fresh availability: uids 1 and 2 list ``sn1/a``, uid 2 serves it no more (its 404), uid 3 lists ``sn1/b``
    and serves it no more. uid 1, failing, is set aside: ``sn1/a`` is a 503 (its miner is failing), ``sn1/b`` stays
    OpenAI's 404 (no miner that serves it is set aside), as does a model no miner lists."""
    failing, answers_404, answers_404_too = down(), not_serving(), not_serving()
    async with api_with_miners(tmp_path, {1: failing, 2: answers_404, 3: answers_404_too}) as api:
        fresh_availability(api, {1: ["sn1/a"], 2: ["sn1/a"], 3: ["sn1/b"]})
        for _ in range(3):  # races 1 and 2 (those listing it): 1 fails, 2 says it does not serve it
            status, _, text = await post(api, {"model": "sn1/a", "messages": MESSAGES}, timeout=10)
            assert status == 502, text
        status, headers, text = await post(api, {"model": "sn1/a", "messages": MESSAGES}, timeout=10)
        assert status == 503 and json.loads(text)["error"]["code"] == "no_miners_available", text
        assert "Retry-After" in headers and answers_404.calls == 4
        for model in ("sn1/b", "sn1/none"):
            status, _, text = await post(api, {"model": model, "messages": MESSAGES}, timeout=10)
            assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found", (model, text)


async def test_available_miners_leave_out_those_set_aside_and_both_routes_name_them(tmp_path: Path) -> None:
    """``get_available_miners`` says it lists the miners a chat would race, and went on listing a miner set aside,
    which no chat raced: an app picking ``uids`` from it chose a miner failing every request. It leaves it out now;
    ``miner_availabilities`` keeps the validator's entries as they are (the original API's shape: the miners' own
    claim), and both name the uids set aside in ``x-sn1-set-aside``."""
    async with api_with_miners(tmp_path, {1: down(), 2: good()}) as api:
        fresh_availability(api, {1: ["sn1/a"], 2: ["sn1/a"]})

        async def routes() -> tuple[list[int], str, dict, str]:
            async with aiohttp.ClientSession(headers={"api-key": api.key}) as s:
                async with s.get(api.url + "/miner_availabilities/get_available_miners?model=sn1/a") as r:
                    assert r.status == 200 and r.headers["x-sn1-availability"] == "fresh"
                    listed, listed_aside = await r.json(), r.headers["x-sn1-set-aside"]
                async with s.post(api.url + "/miner_availabilities/miner_availabilities", json=None) as r:
                    assert r.status == 200
                    return listed, listed_aside, await r.json(), r.headers["x-sn1-set-aside"]

        before = await routes()
        assert before[:2] == ([1, 2], "") and before[3] == "" and set(before[2]) == {"1", "2"}
        for _ in range(3):  # uid 2 answers each; uid 1 fails each and is set aside
            status, body = await chat(api)
            assert status == 200, body
        listed, listed_aside, entries, entries_aside = await routes()
        assert (listed, listed_aside) == ([2], "1")
        assert entries == before[2] and entries_aside == "1"  # the validator's entries, as they were
