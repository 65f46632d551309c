"""Mixture of miners, web retrieval and the availability routes through the real API app."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from loguru import logger

from neurons.validator.payload import OrganicPayload
from tests.helpers import Script, api_with_miners, chunk, log_lines, post, sse

MESSAGES = [{"role": "user", "content": "What is a subnet?"}]


def answer(text: str, delay: float = 0.0) -> Script:
    return Script([(delay, d) for d in sse(chunk(text), chunk(finish="stop"))])


@pytest.mark.parametrize("how", [{"mixture": True}, {"sampling_parameters": {"mixture": True}},
                                 {"inference_mode": "Mixture-of-Agents"}])
async def test_mixture_synthesises_valid_answers_on_the_top_miner(tmp_path: Path, how: dict) -> None:
    scripts = {1: answer("first view"), 2: Script([], status=500), 3: answer("third view"),
               4: Script([(0, b"data: garbage\n\n")])}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.1, 2: 0.1, 3: 0.7, 4: 0.1},
                               mixture_k=4) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, **how})
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == "3", "the final answer comes from the top-incentive miner"
    assert sorted(headers["x-sn1-mixture-uids"].split(",")) == ["1", "3"]
    final_body = scripts[3].bodies[-1]
    system = final_body["messages"][0]
    assert system["role"] == "system" and "first view" in system["content"] and "third view" in system["content"]
    assert final_body["messages"][1:] == MESSAGES
    assert "mixture" not in final_body and "mixture" not in (final_body.get("sampling_parameters") or {})


async def test_mixture_streams_the_synthesis(tmp_path: Path) -> None:
    scripts = {1: answer("a"), 2: answer("b")}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_responses_api_request_can_ask_for_a_mixture(tmp_path: Path, stream: bool) -> None:
    scripts = {1: answer("first view"), 2: answer("second view")}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1}) as api:
        status, headers, text = await post(api, {"input": "What is a subnet?", "inference_mode": "Mixture-of-Agents",
                                                 "stream": stream}, path="/v1/responses")
    assert status == 200 and headers["x-sn1-miner-uid"] == "1", text
    assert sorted(headers["x-sn1-mixture-uids"].split(",")) == ["1", "2"]
    system = scripts[1].bodies[-1]["messages"][0]
    assert "first view" in system["content"] and "second view" in system["content"]
    assert ("event: response.completed" in text) if stream else json.loads(text)["status"] == "completed"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("/v1/responses", {"input": "x", "tools": [{"type": "function", "name": "f"}]}),
], ids=["chat", "responses"])
async def test_a_mixture_takes_no_tools_as_the_readme_says(tmp_path: Path, path: str, body: dict) -> None:
    scripts = {1: answer("a")}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, text = await post(api, {**body, "mixture": True}, path=path)
    assert status == 400 and json.loads(text)["error"]["param"] == "tools", text
    assert scripts[1].calls == 0


async def test_mixture_with_no_valid_first_stage_is_502(tmp_path: Path) -> None:
    scripts = {1: Script([], status=500), 2: Script([(0, b"data: {}\n\n")])}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "mixture": True})
    assert status == 502 and json.loads(text)["error"]["code"] == "no_valid_answer"


async def test_the_mixtures_last_word_goes_to_a_miner_that_answered_stage_one(tmp_path: Path) -> None:
    """The top-incentive miner failed stage one: asked for the synthesis anyway, it failed that too and
    the whole request was a 502, every time."""
    scripts = {1: Script([], status=500), 2: answer("two"), 3: answer("three")}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.06, 3: 0.04}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True})
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == "2", "the top-incentive miner among those that answered"


@pytest.mark.parametrize(("scripts", "settings", "status", "code"), [
    ({1: Script([], status=400, error_code="model_server_rejected")}, {}, 400, "model_server_rejected"),
    ({1: answer("late", delay=3)}, {"request_timeout": 1.0}, 504, "deadline_exceeded"),
], ids=["refused", "deadline"])
async def test_a_mixture_that_gets_no_first_stage_answer_fails_as_a_plain_request_would(
        tmp_path: Path, scripts: dict, settings: dict, status: int, code: str) -> None:
    """Every failure was a 502, which the OpenAI SDK retries twice: a refused request (the caller's
    400) was sent three times, a timeout was reported as a bad answer."""
    async with api_with_miners(tmp_path, scripts, **settings) as api:
        got, _, text = await post(api, {"messages": MESSAGES, "mixture": True})
    err = json.loads(text)["error"]
    assert got == status and err["code"] == code and err["message"].startswith("Mixture, first stage:"), text


@pytest.mark.parametrize(("delays", "used"), [({1: 0, 2: 0, 3: 0.1}, ["1", "2", "3"]), ({1: 0, 2: 0, 3: 2.0}, ["1", "2"]),
                                             ({1: 0, 2: 2.0}, ["1"])], ids=["in-grace", "stalled", "stalled-of-two"])
async def test_a_stalled_first_stage_miner_does_not_hold_the_mixture_once_others_answered(
        tmp_path: Path, delays: dict[int, float], used: list[str]) -> None:
    """One stalled miner held the first stage for half the deadline (5 s here) though the others had answered at
    once: the caller waited for nothing. Once half the miners asked (rounded up) gave a draft, the rest have a grace
    (as long again as those took, at least half a second): a miner a little slower is still used, a stalled one is
    not waited for."""
    scripts = {uid: answer(f"view {uid}", delay=delay) for uid, delay in delays.items()}
    incentives = {uid: 1.0 - uid / 10 for uid in delays}
    async with api_with_miners(tmp_path, scripts, incentives=incentives, request_timeout=10.0) as api:
        started = time.monotonic()
        status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True})
        took = time.monotonic() - started
    assert status == 200, text
    assert sorted(headers["x-sn1-mixture-uids"].split(",")) == used
    assert took < 2.0, f"the caller waited {took:.1f} s"


async def test_a_synthesis_of_long_drafts_is_cut_to_what_the_final_miner_takes(tmp_path: Path) -> None:
    """Two long drafts (600 kB each) made a synthesis body over the miners' limit (their ``MAX_BODY_BYTES``; 1 MiB
    here, aiohttp's default): every miner asked to write it refused the body (413) and the caller got a 502 with
    two valid answers in hand. Each draft is now cut so the body fits, with a note that it was, and a DEBUG line
    with the request's id says so (nothing did: an operator reading a thin synthesis had no sign of the cut)."""
    scripts = {uid: answer(f"view {uid} " + "x" * 600_000) for uid in (1, 2)}
    lines, sink = log_lines("DEBUG")
    try:
        async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1},
                                   miner_max_body_bytes=1 << 20) as api:
            status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True},
                                               headers={"x-request-id": "rid-cut-drafts"})
    finally:
        logger.remove(sink)
    assert status == 200, text
    (cut,) = [x for x in lines if "drafts cut" in x]
    assert cut.startswith("DEBUG mixture rid=rid-cut-drafts first-stage drafts cut to fit the synthesis"), cut
    assert "2 of 2 drafts cut" in cut and "MINER_MAX_BODY_BYTES 1048576" in cut, cut
    assert headers["x-sn1-miner-uid"] == "1"
    final = scripts[1].bodies[-1]
    assert len(json.dumps(final, separators=(",", ":")).encode()) <= 1 << 20
    system = final["messages"][0]["content"]
    assert ". view 1 x" in system and ". view 2 x" in system and system.count("[cut short]") == 2, system[-300:]


async def test_each_first_stage_miner_gets_a_seed_of_its_own_and_the_synthesis_the_callers(tmp_path: Path) -> None:
    """Every first-stage miner got the caller's seed: deterministic miners serving one model wrote the same draft,
    and the mixture synthesised one answer three times. Each now gets a seed of its own, derived from the caller's
    (the same request with the same seed asks each miner the same); the synthesis gets the caller's seed. The
    stage's scoring payload names each miner's seed, and the validator scores each against its own."""
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {}, honest={1, 2, 3}, incentives={1: 0.5, 2: 0.3, 3: 0.2}) as api:
        api.ctx.payload_sinks.append(payloads.append)
        for _ in range(2):
            status, headers, text = await post(api, {"messages": MESSAGES, "mixture": True, "seed": 42})
            assert status == 200 and headers["x-sn1-seed"] == "42", text
        await asyncio.sleep(0.2)
        snap = api.ctx.metagraph.snapshot
    stages = [p for p in payloads if p["kind"] == "mixture_stage1"]
    finals = [p for p in payloads if p["kind"] == "mixture"]
    assert len(stages) == 2 and len(finals) == 2, payloads
    system = finals[0]["body"]["messages"][0]["content"]
    drafts = system.split("Responses from models:\n", 1)[1].split("\n")
    assert len(drafts) == 3 and len({d.split(". ", 1)[1] for d in drafts}) == 3, drafts
    seeds = stages[0]["seeds"]
    assert sorted(seeds) == ["1", "2", "3"] and len(set(seeds.values())) == 3, seeds
    assert stages[1]["seeds"] == seeds, "the same caller's seed asks each miner with the same seed"
    assert stages[0]["body"]["seed"] == 42 and finals[0]["body"]["seed"] == 42
    job = OrganicPayload.model_validate(stages[0]).to_job(snap, 30.0)
    assert {u: b["seed"] for u, b in job.bodies.items()} == {int(u): s for u, s in seeds.items()}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_mixtures_estimated_usage_counts_the_drafts_in_its_prompt(tmp_path: Path, stream: bool) -> None:
    """A final miner that reports no usage gets an estimate (``"estimated": true``): its ``prompt_tokens`` counted the
    caller's messages alone (5 tokens here), though the README says a mixture's prompt holds the first stage's
    answers and counts them (as a miner's own count does): two 4,000-character drafts went uncounted, in the answer's
    usage and the key's daily tokens alike."""
    scripts = {uid: answer(f"view {uid} " + "word " * 800) for uid in (1, 2)}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "mixture": True, "stream": stream,
                                           "stream_options": {"include_usage": True} if stream else None})
    assert status == 200, text
    usage = ([json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")][-1]["usage"]
             if stream else json.loads(text)["usage"])
    assert usage["estimated"] is True and usage["prompt_tokens"] >= 2 * 4000 // 4, usage


def retrieval(results: list | str, delay: float = 0.0) -> Script:
    text = results if isinstance(results, str) else json.dumps(results)
    return answer(text, delay)


async def get_json(api, path: str, **kw) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s:
        async with s.request(kw.pop("method", "GET"), api.url + path, headers={"api-key": api.key}, **kw) as r:
            return r.status, await r.json()


async def test_web_retrieval_merges_and_dedups_hostile_miners(tmp_path: Path) -> None:
    scripts = {
        1: retrieval([{"url": "https://a.example/1", "content": "one", "relevant": "r"},
                      {"url": "https://a.example/2", "content": "two", "relevant": "r"}]),
        2: retrieval([{"url": "HTTPS://A.EXAMPLE/1/", "content": "dup", "relevant": "r"}, {"bogus": True},
                      {"url": "https://b.example/3", "content": "three", "relevant": "r"}]),
        3: retrieval("this is not json"),
        4: Script([], status=500),
    }
    async with api_with_miners(tmp_path, scripts) as api:
        status, data = await get_json(api, "/web_retrieval?search_query=subnets&n_miners=4&n_results=5")
        assert status == 200, data
        from shared.urls import normalise_url

        urls = sorted(normalise_url(r["url"]) for r in data["results"])
        assert urls == ["https://a.example/1", "https://a.example/2", "https://b.example/3"]
        assert all(set(r) == {"url", "content", "relevant"} for r in data["results"])
        status, data = await get_json(api, "/web_retrieval", method="POST",
                                      json={"search_query": "subnets", "n_miners": 4, "n_results": 1})
        assert status == 200 and len(data["results"]) == 1
        # the subnet's original API took a POST with its parameters in the query string, and no body
        status, data = await get_json(api, "/web_retrieval?search_query=subnets&n_miners=4&n_results=2", method="POST")
        assert status == 200 and len(data["results"]) == 2, data
        status, data = await get_json(api, "/web_retrieval", method="POST")
        assert status == 400 and data["error"]["param"] == "search_query", data  # neither: the field it needs
        sent = scripts[1].bodies[-1]
        assert sent["task"] == "WebRetrievalTask" and sent["messages"][0]["content"] == "subnets"
        for bad in ("/web_retrieval", "/web_retrieval?search_query=", "/web_retrieval?search_query=x&n_results=0",
                    "/web_retrieval?search_query=x&n_miners=abc", "/web_retrieval?search_query=x&uids=1,zz"):
            status, data = await get_json(api, bad)
            assert status == 400 and "error" in data, bad
        for field, wrong in (("n_miners", True), ("n_results", "3"), ("max_response_time", "2"), ("uids", ["1"])):
            # a JSON body has its types: one converted (true as 1 miner) is a 400 naming it, as on every route
            status, data = await get_json(api, "/web_retrieval", method="POST", json={"search_query": "x", field: wrong})
            assert status == 400 and data["error"]["param"].split(".")[0] == field, (field, data)


async def test_a_miners_bad_url_is_dropped_not_a_500_and_every_repeated_uid_is_asked(tmp_path: Path) -> None:
    """yarl decodes a host lazily: "xn--a.com" raised outside the check, and one miner's bad URL turned
    every search it was in into a 500 (web search on chat completions too), the others' results lost."""
    scripts = {1: retrieval([{"url": "http://xn--a.com/", "content": "bad host", "relevant": "b"}]),
               2: retrieval([{"url": "https://b.example/ok", "content": "fine", "relevant": "f"}])}
    async with api_with_miners(tmp_path, scripts) as api:
        status, data = await get_json(api, "/web_retrieval?search_query=x&uids=1&uids=2")
        assert status == 200, data
        assert [r["url"] for r in data["results"]] == ["https://b.example/ok"]
        assert scripts[1].calls == scripts[2].calls == 1, "uids=1&uids=2 asks both (the last one alone was asked)"


async def test_a_post_with_a_json_body_refuses_a_query_string_it_would_ignore(tmp_path: Path) -> None:
    """``POST /web_retrieval?n_results=1`` with a JSON body took the body's parameters and dropped the query
    string's in silence: the caller asked for one result and got five. Both at once is a 400 naming the query's
    parameter, and no miner is asked; a body alone, or a query string alone (the original API's call), is served."""
    found = [{"url": f"https://a.example/{i}", "content": "page", "relevant": "r"} for i in range(5)]
    scripts = {1: retrieval(found)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, data = await get_json(api, "/web_retrieval?n_results=1", method="POST", json={"search_query": "x"})
        assert (status, data["error"]["code"], data["error"]["param"]) == (400, "unsupported_parameter", "n_results")
        assert "query string" in data["error"]["message"] and "body" in data["error"]["message"], data
        assert scripts[1].calls == 0, "refused before any miner was asked"
        status, data = await get_json(api, "/web_retrieval", method="POST", json={"search_query": "x", "n_results": 1})
        assert status == 200 and len(data["results"]) == 1, data
        status, data = await get_json(api, "/web_retrieval?search_query=x&n_results=1", method="POST")
        assert status == 200 and len(data["results"]) == 1, data


async def test_a_get_with_a_json_body_is_told_the_body_is_not_read(tmp_path: Path) -> None:
    """``curl -X GET -d '{"search_query": ...}'``: a GET reads the query string, and the 400 said "Missing required
    parameter: 'search_query'", which the caller had sent. It says the body of a GET is not read now."""
    scripts = {1: retrieval([{"url": "https://a.example/1", "content": "page", "relevant": "r"}])}
    async with api_with_miners(tmp_path, scripts) as api:
        status, data = await get_json(api, "/web_retrieval", json={"search_query": "x"})
        assert (status, data["error"]["code"]) == (400, "unsupported_parameter"), data
        assert "GET" in data["error"]["message"] and "body" in data["error"]["message"], data
        status, data = await get_json(api, "/web_retrieval?search_query=x", json={})  # an empty object: nothing in it
        assert status == 200 and len(data["results"]) == 1, data


async def test_a_body_on_any_get_is_refused_not_ignored(tmp_path: Path) -> None:
    """Only ``GET /web_retrieval`` refused a body; every other GET ignored it, so ``curl -X GET -d '{"days": 7}'
    /v1/usage`` answered 30 days as if the body had been read. A GET (or HEAD) with a body holding anything is a 400
    ``unsupported_parameter`` on every route, before the key is read (not charged); nothing, or ``{}``, is fine."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api, aiohttp.ClientSession() as s:
        key = {"api-key": api.key}
        for path, body, headers, param in (("/v1/usage", b'{"days": 7}', key, "days"), ("/v1/models", b"days=7", key, None),
                                           ("/v1/sessions", b'{"model": "x"}', {}, "model"), ("/health", b"[1]", {}, None)):
            async with s.get(api.url + path, data=body, headers=headers) as r:
                err = await r.json()
                assert r.status == 400 and "x-ratelimit-remaining-requests" not in r.headers, (path, err)
            assert (err["error"]["code"], err["error"]["param"]) == ("unsupported_parameter", param), err
            assert err["error"]["message"].startswith("A GET reads its parameters from the query string, and would "
                                                      "not read this body"), err
        async with s.head(api.url + "/v1/usage", data=b'{"days": 7}', headers=key) as r:
            assert r.status == 400
        for body in (b"", b" {} "):
            async with s.get(api.url + "/v1/usage?days=7", data=body, headers=key) as r:
                assert r.status == 200 and len((await r.json())["days"]) <= 7


async def test_prose_or_junk_from_a_retrieval_miner_neither_wins_nor_passes_for_a_search(tmp_path: Path) -> None:
    """The fast miner that answers prose was counted the race's winner (``sn1_api_miner_wins``), and a
    search whose every miner sent junk was a 200 with no results, as if the web had nothing."""
    from tests.compat.support import sample

    good = [{"url": "https://b.example/ok", "content": "fine", "relevant": "f"}]
    scripts = {1: retrieval("Here are some great links!"), 2: retrieval(good, delay=0.3),
               3: retrieval([{"bogus": True}]), 4: retrieval([])}
    async with api_with_miners(tmp_path, scripts) as api:
        status, data = await get_json(api, "/web_retrieval?search_query=x&uids=1,2")
        assert status == 200 and [r["url"] for r in data["results"]] == ["https://b.example/ok"]
        status, data = await get_json(api, "/web_retrieval?search_query=x&uids=1,3")
        assert status == 502 and data["error"]["code"] == "no_valid_answer", data
        status, data = await get_json(api, "/web_retrieval?search_query=x&uids=1,4")
        assert status == 200 and data == {"results": []}, "nothing found is an answer, not a failure"
        async with aiohttp.ClientSession() as s, s.get(api.url + "/metrics") as r:
            text = await r.text()
        wins = {uid: sample(text, "sn1_api_miner_wins_total", uid=str(uid)) for uid in scripts}
        assert wins == {1: 0, 2: 1, 3: 0, 4: 1}, wins


async def test_web_retrieval_keeps_to_max_request_timeout(tmp_path: Path) -> None:
    """max_response_time (10 s by default) went past the operator's cap on every deadline."""
    slow = retrieval([{"url": "https://b.example/late", "content": "late", "relevant": "l"}], delay=5)
    async with api_with_miners(tmp_path, {1: slow}, max_request_timeout=1.0, request_timeout=1.0) as api:
        started = time.monotonic()
        status, _ = await get_json(api, "/web_retrieval?search_query=x&max_response_time=6")
        assert time.monotonic() - started < 3 and status in (502, 504)


async def test_web_retrieval_cuts_a_longer_max_response_time_to_max_request_timeout(tmp_path: Path) -> None:
    """As a chat's ``timeout`` is, and as the README says ("capped by MAX_REQUEST_TIMEOUT"): past a fixed 120 it was
    a 400, on a node whose operator allows 300 s too."""
    found = retrieval([{"url": "https://a.example/x", "content": "x", "relevant": "x"}])
    async with api_with_miners(tmp_path, {1: found}, max_request_timeout=300.0) as api:
        for seconds in (200, 600):
            status, data = await get_json(api, f"/web_retrieval?search_query=x&max_response_time={seconds}")
            assert status == 200 and [r["url"] for r in data["results"]] == ["https://a.example/x"], data
        status, data = await get_json(api, "/web_retrieval?search_query=x&max_response_time=601")
        assert status == 400 and data["error"]["param"] == "max_response_time"


async def test_availability_routes_serve_the_cache(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: answer("x"), 2: answer("y")}) as api:
        from api.availability import AvailabilityCache

        cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "hk")
        cache.entries = {1: {"task_availabilities": {"InferenceTask": True},
                             "llm_model_availabilities": {"m1": True}}, 2: None}
        cache.refreshed_at = time.monotonic()
        api.ctx.availability = cache
        status, data = await get_json(api, "/miner_availabilities/miner_availabilities", method="POST", json=[1, 2, 3])
        assert status == 200 and data["1"]["llm_model_availabilities"] == {"m1": True}
        assert data["2"] is None and data["3"] is None
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?task=InferenceTask&model=m1&k=5")
        assert status == 200 and data == [1]
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?k=0")
        assert status == 400
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?task=InferenceTask&k=1000")
        assert status == 200 and data == [1], "a k beyond every uid asks for all of them (it was a 400 past 256)"
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?k=" + "9" * 5000)
        assert status == 400 and data["error"]["param"] == "k"
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?task=Inference")
        assert status == 400 and data["error"]["param"] == "task" and "InferenceTask" in data["error"]["message"]
        assert data["error"]["code"] == "unknown_task", "the code a chat request's unknown task has (README)"
        # a parameter it does not read (``models``, ``limit``) was ignored: every miner listed as if for the model
        status, data = await get_json(api, "/miner_availabilities/get_available_miners?models=m2")
        assert (status, data["error"]["param"]) == (400, "models"), data
        status, data = await get_json(api, "/miner_availabilities/miner_availabilities", method="POST",
                                      json={"not": "a list"})
        assert status == 400


def serves_models(*models: str) -> dict:
    return {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {m: True for m in models}}


async def test_available_miners_are_the_ones_a_chat_request_would_race(tmp_path: Path) -> None:
    """The route listed every uid in the cache: uid 9 (not in the metagraph) and uid 2 (no axon any more),
    which a chat naming them refuses with a 400; and with the validator down it went on listing hours-old
    data while selection had fallen back to every serving miner."""
    from api.availability import AvailabilityCache
    from shared.metagraph import MetagraphSnapshot

    async with api_with_miners(tmp_path, {uid: answer(f"from {uid}") for uid in (1, 2, 3)}) as api:
        snap = api.ctx.metagraph.snapshot
        api.ctx.metagraph.snapshot = MetagraphSnapshot(snap.netuid, snap.block + 1, tuple(
            replace(n, axon=None) if n.uid == 2 else n for n in snap.neurons))  # uid 2 stopped serving
        cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "hk", stale_seconds=60)
        cache.entries = {1: serves_models("m1"), 2: serves_models("m1"), 3: serves_models("m2"),
                         9: serves_models("m1")}
        cache.refreshed_at = time.monotonic()
        api.ctx.availability = cache
        async with aiohttp.ClientSession(headers={"api-key": api.key}) as s:
            async def agree(want: list[int], state: str) -> None:
                """The route lists ``want`` for m1; a chat for m1 naming a uid is answered iff it is listed."""
                async with s.get(api.url + "/miner_availabilities/get_available_miners?model=m1") as r:
                    assert (r.status, await r.json(), r.headers["x-sn1-availability"]) == (200, want, state)
                for uid in (1, 2, 3, 9):
                    status, _, _ = await post(api, {"messages": MESSAGES, "model": "m1", "uids": [uid]})
                    assert (status == 200) == (uid in want), (uid, status)

            await agree([1], "fresh")
            cache.refreshed_at -= 3600  # the validator has been down an hour: selection races every serving miner
            await agree([1, 3], "unknown")


async def test_a_task_a_miner_advertises_is_listed_as_it_is_raced(tmp_path: Path) -> None:
    """A chat for a task a miner advertises is raced to it, but get_available_miners refused the task
    with a 400 ("the tasks are InferenceTask, ...")."""
    from api.availability import AvailabilityCache

    async with api_with_miners(tmp_path, {uid: answer(f"from {uid}") for uid in (1, 2)}) as api:
        cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "hk")
        cache.entries = {1: {"task_availabilities": {"ProgrammingTask": True}, "llm_model_availabilities": {}},
                         2: serves_models("m1")}
        cache.refreshed_at = time.monotonic()
        api.ctx.availability = cache
        status, listed = await get_json(api, "/miner_availabilities/get_available_miners?task=ProgrammingTask")
        assert (status, listed) == (200, [1])
        status, headers, _ = await post(api, {"messages": MESSAGES, "task": "ProgrammingTask"})
        assert status == 200 and headers["x-sn1-miner-uid"] == "1"
        status, err = await get_json(api, "/miner_availabilities/get_available_miners?task=Programming")
        assert status == 400 and "ProgrammingTask" in err["error"]["message"], err


async def test_attribution_under_randomised_completion_orders(tmp_path: Path) -> None:
    rng = random.Random(7)
    scripts = {}
    for uid in range(1, 6):
        steps = [(rng.uniform(0, 0.03), d) for d in sse(*(chunk(f"u{uid}c{i} ") for i in range(4)),
                                                         chunk(finish="stop"))]
        scripts[uid] = Script(steps)
    got: list[dict] = []
    async with api_with_miners(tmp_path, scripts, default_k=5) as api:
        def sink(p: dict) -> None:
            got.append(p)

        api.ctx.payload_sinks.append(sink)
        results = await asyncio.gather(*(post(api, {"messages": MESSAGES, "stream": bool(i % 2)}) for i in range(6)))
        assert all(r[0] == 200 for r in results)
        for _ in range(100):
            if len(got) == 6:
                break
            await asyncio.sleep(0.02)
    assert len(got) == 6
    for p in got:
        for uid, chunks in p["chunks"].items():
            text = "".join(json.loads(c)["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == "".join(f"u{uid}c{i} " for i in range(4)), "a uid's chunks must be its own, in order"
            assert len(p["timings"][uid]) == len(chunks)


async def test_the_final_miner_of_a_mixture_cut_off_by_what_stage_one_left_is_not_scored(tmp_path: Path) -> None:
    """Stage one spends part of the node's deadline; the final miner gets the rest. Running out of that
    shorter time is not its fault: it is left out of the payload, as a caller's short timeout is."""
    payloads: list[dict] = []
    top = Script([])
    top.steps = ByCall(top, first=[(0.2, d) if i == 0 else (0, d)
                                   for i, d in enumerate(sse(chunk("first view"), chunk(finish="stop")))],
                       later=answer("too late", delay=2.0).steps)  # the final-stage call runs out of time
    scripts = {1: top, 2: answer("second view")}
    async with api_with_miners(tmp_path, scripts, incentives={1: 0.9, 2: 0.1}, request_timeout=1.0) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, _, text = await post(api, {"messages": MESSAGES, "mixture": True})
        assert status == 504, text
        await asyncio.sleep(0.2)
    assert [sorted(p["uids"]) for p in payloads] == [[1, 2]], "stage one is scored, the cut-off final call is not"
    assert payloads[0]["errors"] == {}


class ByCall(list):
    """A script's steps that differ by call: its first call gets ``first``, every later one ``later``."""

    def __init__(self, script: Script, *, first: list, later: list) -> None:
        super().__init__(first)
        self.script, self.first, self.later = script, first, later

    def __iter__(self):
        return iter(self.first if self.script.calls <= 1 else self.later)


async def test_fields_openai_documents_as_nullable_take_null(tmp_path: Path) -> None:
    """``stream=None`` from the OpenAI SDK (and null max_tokens, n, echo on completions) was a 400."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        for path, body in (("/v1/chat/completions", {"messages": MESSAGES, "stream": None}),
                           ("/v1/completions", {"prompt": "hi", "stream": None, "max_tokens": None, "n": None,
                                                "echo": None}),
                           ("/v1/responses", {"input": "hi", "stream": None})):
            status, headers, text = await post(api, body, path=path)
            assert status == 200 and headers["Content-Type"].startswith("application/json"), (path, text)
        status, _, text = await post(api, {"messages": MESSAGES, "stream": "yes"})
        assert status == 400 and json.loads(text)["error"]["param"] == "stream"


async def test_too_many_stop_sequences_is_a_400_naming_stop(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        status, _, text = await post(api, {"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]})
    err = json.loads(text)["error"]
    assert status == 400 and err["param"] == "stop" and "maximum length 4" in err["message"], err
    assert "Value error" not in err["message"]


async def test_values_openai_accepts_are_accepted(tmp_path: Path) -> None:
    """A negative seed (OpenAI's range is any int64) and more than 65,536 output tokens (OpenAI allows
    128k) were 400s; the model server is the one to refuse what its context cannot hold."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        for path, body in (("/v1/chat/completions", {"messages": MESSAGES, "seed": -1, "max_tokens": 128_000}),
                           ("/v1/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 100_000}),
                           ("/v1/completions", {"prompt": "hi", "seed": -(2**63), "max_tokens": 100_000}),
                           ("/v1/responses", {"input": "hi", "seed": -5, "max_output_tokens": 100_000})):
            status, headers, text = await post(api, body, path=path)
            assert status == 200, (path, text)
            assert headers["x-sn1-seed"] == str(body.get("seed", headers["x-sn1-seed"]))


@pytest.mark.parametrize(("messages", "extra", "param", "says"), [
    ([{"role": "user", "content": [{"type": "bogus", "text": "hi"}]}], {}, "messages.0.content.0.type",
     "Input should be 'text', 'image_url'"),
    ([{"role": "user", "content": [{"type": "text"}]}], {}, "messages.0.content.0.text", "a text part needs its text"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], {}, "messages.0.content.0.image_url",
     "an image_url part needs its image_url"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}], {},
     "messages.0.content.0.image_url.url", "Missing required parameter"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "https://example.com/a.png"}]}], {},
     "messages.0.content.0.image_url", "not a string"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}], {},
     "messages.0.content.0.input_audio.data", "Missing required parameter"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "input_audio"}]}], {},
     "messages.0.content.1.input_audio", "an input_audio part needs its input_audio"),
    ([{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}], {},
     "messages.0.content.0.file.file_data", "file ids need OpenAI's file store"),
    ([{"role": "user", "content": [{"type": "file"}]}], {}, "messages.0.content.0.file", "a file part needs its file"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "sunny"}], {},
     "messages.[1].role", "must be a response to a preceeding message with 'tool_calls'"),
    (MESSAGES, {"metadata": {str(n): "v" for n in range(17)}}, "metadata", "at most 16"),
    (MESSAGES, {"metadata": {"k": 1}}, "metadata.k", "valid string"),
], ids=["unknown part", "text part without text", "image part without image", "image without url",
        "image as a string", "audio without data", "audio part without audio", "file by id", "file part without file",
        "tool result for no call", "17 metadata pairs", "metadata number"])
async def test_messages_openai_refuses_are_400s_naming_the_place_not_a_model_servers_refusal(
        tmp_path: Path, messages: list, extra: dict, param: str, says: str) -> None:
    """Each of these reached the miners, whose model servers refused it: every miner failed and the caller got
    the server's words with no param (or, from a lenient server, an answer to a malformed request)."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        status, _, text = await post(api, {"messages": messages, **extra})
    err = json.loads(text)["error"]
    assert status == 400 and err["param"] == param and says in err["message"], err


async def test_the_content_parts_openai_takes_are_accepted(tmp_path: Path) -> None:
    """Images, audio and files go to the miners, whose model servers read what they can; a call's result after
    the call, an assistant turn's refusal part and metadata within bounds are fine."""
    called = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
              {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
              {"role": "user", "content": [{"type": "text", "text": "and?"},
                                           {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                           {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                                           {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA"}}]}]
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        status, _, text = await post(api, {"messages": called, "metadata": {"team": "docs"}})
    assert status == 200, text


async def test_a_missing_required_field_is_openais_missing_required_parameter(tmp_path: Path) -> None:
    """OpenAI's words and code, which its SDKs surface (``BadRequestError.code``); it read "Invalid value for
    'messages': Field required" with code invalid_value."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        for path, body, param in (("/v1/chat/completions", {"model": "default"}, "messages"),
                                  ("/v1/completions", {"model": "default"}, "prompt"),
                                  ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages.0.role")):
            status, _, text = await post(api, body, path=path)
            err = json.loads(text)["error"]
            assert status == 400 and (err["code"], err["param"]) == ("missing_required_parameter", param), err
            assert err["message"] == f"Missing required parameter: '{param}'.", err


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/web_retrieval"])
async def test_answers_from_miners_the_caller_named_are_not_scored(tmp_path: Path, path: str) -> None:
    """Any key holder could name its own miner (``uids``) and score it with as many answers as it liked,
    honest only for its own marked requests, or a rival's, to sink it: the validator weighted them as
    callers' traffic (a miner that sandbagged everyone else took the top weight in a minute). Races whose
    miners the caller chose say so in their payload, and the validator does not score them."""
    results = json.dumps([{"url": "https://corpus.sn1.local/wiki/a", "content": "A page."}])
    scripts = {1: answer(results), 2: answer(results)}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, scripts) as api:
        api.ctx.payload_sinks.append(payloads.append)
        chat = path.startswith("/v1")
        for fields in ({"uids": [1]}, {} if chat else {"n_miners": 1}):
            body = {"messages": MESSAGES, **fields} if chat else {"search_query": "a", **fields}
            status, _, text = await post(api, body, path=path)
            assert status == 200, text
        for _ in range(50):
            if len(payloads) == 2:
                break
            await asyncio.sleep(0.02)
        named, chosen = payloads
    assert named["caller_chose_miners"] is True and "caller_chose_miners" not in chosen
    # the validator takes both, and scores only the one whose miners the API chose
    assert not OrganicPayload.model_validate(chosen).caller_chose_miners
    assert OrganicPayload.model_validate(named).caller_chose_miners


async def test_a_callers_short_timeout_is_not_the_latency_rewards_scale(tmp_path: Path) -> None:
    """A 0.5 s ``timeout`` made 0.5 s the scale of the latency reward: an honest miner whose first token came
    at 0.3 s scored about half (any key could cut a rival's reward so). With a caller's shorter deadline the
    payload names the node's own for the request: a long answer's (max_tokens 8192: 120 s), not the
    validator's 30 s, which a ``timeout`` of 119 s made a slow-starting honest miner's scale."""
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: answer("hello")}, max_request_timeout=120.0) as api:
        api.ctx.payload_sinks.append(payloads.append)
        node = api.ctx.settings.request_timeout
        for fields in ({"timeout": 0.5}, {}, {"timeout": 119, "max_tokens": 8192}, {"timeout": 100}):
            status, _, text = await post(api, {"messages": MESSAGES, **fields})
            assert status == 200, text
        for _ in range(50):
            if len(payloads) == 4:
                break
            await asyncio.sleep(0.02)
    # a longer timeout does not widen it either (100 s was the scale, and a slow miner's grace with it)
    assert [p["deadline_s"] for p in payloads] == [node, node, 120.0, node]


async def test_answers_of_a_miner_the_caller_chose_in_effect_are_not_scored(tmp_path: Path) -> None:
    """Without ``uids`` a caller could still aim: name a model only its own miner serves (29,337 scored answers
    in 20 s in the audit), or open a session again and again until it pins its miner. Both are marked as
    chosen by the caller; a model two miners serve, and no session, is scored."""
    from tests.compat.support import fresh_cache, serves

    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: answer("mine"), 2: answer("theirs")}) as api:
        api.ctx.availability = fresh_cache(api, {1: serves(["owner/private", "shared"], ["InferenceTask"]),
                                                 2: serves(["shared"], ["InferenceTask"])})
        api.ctx.payload_sinks.append(payloads.append)
        for model in ("owner/private", "shared"):
            status, _, text = await post(api, {"model": model, "messages": MESSAGES})
            assert status == 200, text
        status, _, text = await post(api, {"model": "shared", "session_duration": 60}, path="/v1/sessions")
        assert status == 200, text
        status, _, text = await post(api, {"model": "shared", "messages": MESSAGES})
        assert status == 200, text
        for _ in range(50):
            if len(payloads) == 3:
                break
            await asyncio.sleep(0.02)
    assert [p.get("caller_chose_miners", False) for p in payloads] == [True, False, True]
