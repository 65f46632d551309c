"""Web search through the real API app (the Responses API's ``web_search`` tool, and chat completions'
``web_search_options``): the search is a web retrieval race, its results reach the chat miners, and
the answer's mentions of a source are citations the SDK reads."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from api import web_search
from shared.errors import ApiError
from tests.compat.support import fresh_cache, serves
from tests.helpers import (
    Script,
    api_with_miners,
    chunk,
    info_lines,
    openai_client,
    post,
    sse,
    stream_faults,
    wait_until,
)

PAGE = "https://corpus.sn1.local/wiki/pelseldan-city"


def miner_answering(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_the_answer_gets_the_results_and_cites_them(tmp_path: Path, stream: bool) -> None:
    # A scripted miner answers every request alike: its text is a retrieval result list naming PAGE, which
    # the search reads as results and which, as the chat answer, mentions PAGE.
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    scripts = {1: miner_answering(text), 2: miner_answering(text)}
    async with api_with_miners(tmp_path, scripts) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        fields = {"model": "default", "input": "Tell me about Pelseldan", "instructions": "Be brief.",
                  "tools": [{"type": "web_search"}], "include": ["web_search_call.action.sources"],
                  "extra_body": {"timeout": 4}}
        if stream:
            async with client.responses.stream(**fields) as events:
                got = [event async for event in events]
                r = await events.get_final_response()
            assert "response.output_text.annotation.added" in [event.type for event in got]
            # in the order sent (the search's completed event was numbered before the events ahead of it)
            assert [event.sequence_number for event in got] == list(range(len(got)))
        else:
            r = await client.responses.create(**fields)
    search, message = r.output
    assert [s.url for s in search.action.sources] == [PAGE]
    (cite,) = [a for a in message.content[0].annotations if a.url == PAGE]
    assert message.content[0].text[cite.start_index:cite.end_index] == PAGE
    bodies = [b for s in scripts.values() for b in s.bodies]
    retrieval = [b for b in bodies if b.get("task") == "WebRetrievalTask"]
    chats = [b for b in bodies if b.get("task") != "WebRetrievalTask"]
    assert retrieval and retrieval[0]["messages"] == [{"role": "user", "content": "Tell me about Pelseldan"}]
    roles = [m["role"] for m in chats[0]["messages"]]
    assert roles == ["system", "system", "user"] and chats[0]["messages"][0]["content"] == "Be brief."
    assert f"[1] {PAGE}" in chats[0]["messages"][1]["content"]
    assert all("web_search" not in json.dumps(b.get("tools", [])) for b in chats), "miners never see the tool"
    assert retrieval[0]["timeout"] == 2, "the search gets half the caller's timeout"


async def test_without_the_tool_nothing_is_searched(tmp_path: Path) -> None:
    scripts = {1: miner_answering("plain")}
    async with api_with_miners(tmp_path, scripts) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        r = await client.responses.create(model="default", input="Hi",
                                          tools=[{"type": "web_search"}], tool_choice="none")
    assert [o.type for o in r.output] == ["message"]
    assert [b.get("task") for b in scripts[1].bodies] == ["InferenceTask"]


async def test_the_callers_timeout_covers_the_search_and_the_answer(tmp_path: Path) -> None:
    """Every miner takes 1.2 s: the search gets 1 s of a 2 s timeout and finds nothing, and the answer
    gets the 1 s left, so the request ends at its 2 s (a 504) instead of 1 s + a fresh 2 s (a 200)."""
    slow = Script([(1.2, d) for d in sse(chunk("late"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: slow}) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            await client.responses.create(model="default", input="Pelseldan?", tools=[{"type": "web_search"}],
                                          extra_body={"timeout": 2})
    assert err.value.status_code == 504 and time.monotonic() - started < 3


async def test_a_short_timeout_still_gives_the_search_the_least_a_miner_accepts(tmp_path: Path) -> None:
    """Half of a 0.8 s timeout is 0.4 s, under the 0.5 s a miner accepts: every retrieval miner
    refused the search, so it always came back empty."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city."}])
    scripts = {1: miner_answering(text)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, body = await post(api, {"messages": [{"role": "user", "content": "Pelseldan?"}],
                                           "web_search_options": {}, "timeout": 0.8})
    assert status == 200, body
    retrieval = [b for b in scripts[1].bodies if b.get("task") == "WebRetrievalTask"]
    assert retrieval[0]["timeout"] == 0.5
    assert json.loads(body)["choices"][0]["message"]["annotations"], "the search found the page"


async def test_no_retrieval_miner_means_a_search_that_found_nothing_not_a_503(tmp_path: Path) -> None:
    """The README's promise: a search no retrieval miner answered is a failed call, and the answer goes on."""
    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:
        api.ctx.availability = fresh_cache(api, {uid: serves(["sn1/deterministic"], ["InferenceTask"])
                                                 for uid in (1, 2)})  # no WebRetrievalTask
        status, _, body = await post(api, {"messages": [{"role": "user", "content": "Pelseldan?"}],
                                           "web_search_options": {}})
        assert status == 200, body
        status, _, body = await post(api, {"input": "Pelseldan?", "tools": [{"type": "web_search"}]},
                                     path="/v1/responses")
    assert status == 200, body
    call = json.loads(body)["output"][0]
    assert call["type"] == "web_search_call" and call["status"] == "failed"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_chat_completions_take_web_search_options(tmp_path: Path, stream: bool) -> None:
    """OpenAI's ``web_search_options``: the same search, the results in the miners' context, and (not
    streamed) ``url_citation`` annotations in the message; the miners never see the option."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    scripts = {1: miner_answering(text)}
    async with api_with_miners(tmp_path, scripts) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        messages = [{"role": "user", "content": "Tell me about Pelseldan"}]
        options = {"search_context_size": "high"}
        if stream:
            chunks = [c async for c in await client.chat.completions.create(
                model="default", messages=messages, web_search_options=options, stream=True)]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            # the citations come last, in an annotations-only delta, as OpenAI streams them
            (last,) = [c for c in chunks if c.choices and getattr(c.choices[0].delta, "annotations", None)]
            (cite,) = last.choices[0].delta.annotations
            span = cite["url_citation"]
            assert chunks[-1] is last and text[span["start_index"]:span["end_index"]] == PAGE
            assert len({c.id for c in chunks}) == 1, "the citations chunk carries the stream's own id"
        else:
            r = await client.chat.completions.create(model="default", messages=messages, web_search_options=options)
            (cite,) = [a for a in r.choices[0].message.annotations if a.url_citation.url == PAGE]
            assert r.choices[0].message.content[cite.url_citation.start_index:cite.url_citation.end_index] == PAGE
    retrieval, chat = scripts[1].bodies
    assert retrieval["task"] == "WebRetrievalTask" and retrieval["target_results"] == 8  # high: 8 results
    assert f"[1] {PAGE}" in chat["messages"][0]["content"] and "web_search_options" not in chat


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_each_of_n_choices_cites_its_sources(tmp_path: Path, stream: bool) -> None:
    """``n`` > 1 after a web search: every choice's annotations (they were dropped)."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    async with api_with_miners(tmp_path, {1: miner_answering(text), 2: miner_answering(text)}) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        fields = {"model": "default", "messages": [{"role": "user", "content": "Tell me about Pelseldan"}],
                  "web_search_options": {}, "n": 2}
        if stream:
            chunks = [c async for c in await client.chat.completions.create(**fields, stream=True)]
            cited = {c.choices[0].index: c.choices[0].delta.annotations for c in chunks
                     if c.choices and getattr(c.choices[0].delta, "annotations", None)}
            urls = {i: [a["url_citation"]["url"] for a in cites] for i, cites in cited.items()}
            assert len({c.id for c in chunks}) == 1, "the citations belong to the stream's completion"
        else:
            r = await client.chat.completions.create(**fields)
            urls = {c.index: [a.url_citation.url for a in c.message.annotations] for c in r.choices}
    assert urls == {0: [PAGE], 1: [PAGE]}


async def test_a_request_with_no_user_text_searches_nothing(tmp_path: Path) -> None:
    scripts = {1: miner_answering("plain")}
    async with api_with_miners(tmp_path, scripts) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        r = await client.responses.create(model="default", input=[{"role": "system", "content": "Say hi."}],
                                          tools=[{"type": "web_search"}])
    assert [o.type for o in r.output] == ["web_search_call", "message"] and r.output[0].action.query == ""
    assert [b.get("task") for b in scripts[1].bodies] == ["InferenceTask"], "no retrieval race was run"
    assert [m["role"] for m in scripts[1].bodies[0]["messages"]] == ["system"], "and no context was added"


@pytest.mark.parametrize(("path", "fields", "code"), [
    ("/v1/chat/completions", {"session_id": "sess-nope"}, "session_not_found"),
    ("/v1/chat/completions", {"uids": [99]}, "unknown_uid"),
    ("/v1/chat/completions", {"n": 2, "uids": [99]}, "unknown_uid"),
    ("/v1/responses", {"session_id": "sess-nope"}, "session_not_found"),
], ids=["chat-session", "chat-uid", "chat-n", "responses-session"])
async def test_a_request_refused_anyway_spends_no_search(tmp_path: Path, path: str, fields: dict,
                                                         code: str) -> None:
    """Who answers is decided before the search: an unknown session or uid is its 4xx at once, and no
    retrieval miner is asked (each search costs the subnet a race of them)."""
    scripts = {1: miner_answering("plain")}
    async with api_with_miners(tmp_path, scripts) as api:
        if path == "/v1/responses":
            body = {"model": "default", "input": "Pelseldan?", "tools": [{"type": "web_search"}], **fields}
        else:
            body = {"model": "default", "messages": [{"role": "user", "content": "Pelseldan?"}],
                    "web_search_options": {}, **fields}
        status, _, text = await post(api, body, path=path)
    assert status in (400, 404) and json.loads(text)["error"]["code"] == code
    assert scripts[1].bodies == [], "no miner was asked anything"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_max_tool_calls_0_makes_no_search_and_1_makes_it(tmp_path: Path, stream: bool) -> None:
    """``max_tool_calls`` was ignored: with 0 (no call to a built-in tool allowed) the request still cost a
    retrieval race and came back with a ``web_search_call``. The response echoes the bound, as OpenAI's."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    scripts = {1: miner_answering(text)}
    async with api_with_miners(tmp_path, scripts) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        got = {}
        for bound in (0, 1):
            fields = {"model": "default", "input": "Tell me about Pelseldan", "tools": [{"type": "web_search"}],
                      "max_tool_calls": bound}
            if stream:
                async with client.responses.stream(**fields) as events:
                    got[bound] = await events.get_final_response()
            else:
                got[bound] = await client.responses.create(**fields)
            assert got[bound].max_tool_calls == bound
            if bound == 0:
                assert [b.get("task") for b in scripts[1].bodies] == ["InferenceTask"], "no retrieval race was run"
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="default", input="Hi", max_tool_calls=-1)
    assert e.value.param == "max_tool_calls"
    assert [o.type for o in got[0].output] == ["message"]
    assert [o.type for o in got[1].output] == ["web_search_call", "message"]
    assert "WebRetrievalTask" in [b.get("task") for b in scripts[1].bodies]


async def test_filters_allowed_domains_keeps_the_results_on_those_domains(tmp_path: Path) -> None:
    """``filters.allowed_domains`` was accepted and echoed, and every result went to the answer whatever its
    domain: only those on the domains (or their subdomains) do now, as at OpenAI."""
    other = "https://elsewhere.example/page"
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city."}, {"url": other, "content": "Unrelated."}])
    async with api_with_miners(tmp_path, {1: miner_answering(text), 2: miner_answering(text)}) as api:
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        fields = {"model": "default", "input": "Tell me about Pelseldan", "include": ["web_search_call.action.sources"]}
        for domains, kept in ((["sn1.local"], [PAGE]), (["corpus.sn1.local", "ELSEWHERE.example"], [PAGE, other]),
                              (["nowhere.example"], []), (None, [PAGE, other]),
                              # written as URLs (OpenAI asks for names without https://): every result was dropped
                              (["https://corpus.sn1.local/", "http://www.Elsewhere.example/path"], [PAGE, other])):
            tool = {"type": "web_search"} | ({"filters": {"allowed_domains": domains}} if domains else {})
            r = await client.responses.create(**fields, tools=[tool])
            assert sorted(s.url for s in r.output[0].action.sources) == sorted(kept), domains
        for bad in ("sn1.local", [7], ["x"] * 21):
            with pytest.raises(openai.BadRequestError) as e:
                await client.responses.create(**fields, tools=[{"type": "web_search", "filters": {"allowed_domains": bad}}])
            assert e.value.param == "tools.0.filters", e.value


async def _events_as_they_come(api, body: dict, *, until: str | None = None) -> list[dict]:
    """A streamed /v1/responses request's events, read as they arrive (up to the event ``until``, if named)."""
    got: list[dict] = []
    async with aiohttp.ClientSession() as s, s.post(api.url + "/v1/responses", json=body | {"stream": True},
                                                    headers={"Authorization": f"Bearer {api.key}"}) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        async for line in r.content:
            if line.startswith(b"data: "):
                got.append(json.loads(line[6:]))
                if got[-1]["type"] == until:
                    break
    return got


async def test_a_streamed_answer_says_its_search_began_before_the_search_ends(tmp_path: Path) -> None:
    """A web search takes seconds: the stream opens with the search's first events, not after them (it
    sent nothing at all until the search ended: a caller saw a dead connection for ~8 s)."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    slow = Script([(1.0, d) for d in sse(chunk(text), chunk(finish="stop"))])  # every answer takes a second
    async with api_with_miners(tmp_path, {1: slow}) as api:
        body = {"model": "default", "input": "Tell me about Pelseldan", "tools": [{"type": "web_search"}]}
        first = await _events_as_they_come(api, body, until="response.web_search_call.searching")
        asked_then = [b.get("task") for b in slow.bodies]
        got = await _events_as_they_come(api, body)
    assert [e["type"] for e in first] == ["response.created", "response.in_progress", "response.output_item.added",
                                          "response.web_search_call.in_progress",
                                          "response.web_search_call.searching"]
    assert "InferenceTask" not in asked_then, "the search had not ended: no chat miner was asked yet"
    assert first[2]["item"] == {"id": first[3]["item_id"], "type": "web_search_call", "status": "in_progress",
                                "action": {"type": "search", "query": "Tell me about Pelseldan"}}
    types = [e["type"] for e in got]
    assert types[:7] == [e["type"] for e in first] + ["response.web_search_call.completed",
                                                       "response.output_item.done"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    final = got[-1]
    assert final["type"] == "response.completed"
    search, message = final["response"]["output"]
    assert search["id"] == got[6]["item"]["id"] == got[2]["item"]["id"], "one search item, one id"
    assert search["status"] == "completed" and PAGE in message["content"][0]["text"]


async def test_a_stream_opened_by_its_search_for_any_model_names_default_until_a_miner_answers(
        tmp_path: Path) -> None:
    """Opened before any miner answers, its first events said ``model: "unknown"`` when the request named none:
    ``default``, this API's word for any model, as a queued background response says it; the last, the miner's."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    async with api_with_miners(tmp_path, {1: miner_answering(text)}) as api:
        got = await _events_as_they_come(api, {"input": "Tell me about Pelseldan", "tools": [{"type": "web_search"}]})
    assert [got[0]["response"]["model"], got[-1]["response"]["model"]] == ["default", "scripted"]


async def test_a_stream_opened_by_its_search_ends_failed_when_no_miner_answers(tmp_path: Path) -> None:
    """Once the search's events are sent the status is 200: no miner answering is the stream's own
    ``response.failed`` (what the 502 said), which the SDK reads as the end, not a cut connection."""
    down = Script([], status=500)
    async with api_with_miners(tmp_path, {1: down}) as api:
        got = await _events_as_they_come(api, {"model": "default", "input": "Pelseldan?",
                                               "tools": [{"type": "web_search"}]})
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        async with client.responses.stream(model="default", input="Pelseldan?",
                                           tools=[{"type": "web_search"}]) as events:
            sdk = [event.type async for event in events]
    types = [e["type"] for e in got]
    assert types[-3:] == ["response.web_search_call.searching", "response.output_item.done", "response.failed"]
    failed = got[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "uid 1" in failed["error"]["message"], failed["error"]
    assert failed["store"] is False, "a failed answer is not kept, as a refused request is not"
    assert [o["type"] for o in failed["output"]] == ["web_search_call"]
    assert failed["output"][0]["status"] == "failed", "no retrieval miner answered the search either"
    assert sdk[-1] == "response.failed"
    assert [e["sequence_number"] for e in got] == list(range(len(got)))


async def test_a_stream_opened_by_its_search_for_a_model_no_miner_serves_ends_failed_model_not_found(
        tmp_path: Path) -> None:
    """Every miner answers 404 model_not_found after the search's events went out: the stream's
    ``response.failed`` said ``invalid_prompt``, where the same request without the search is OpenAI's 404
    ``model_not_found`` (and a background one ends with that code)."""
    async with api_with_miners(tmp_path, {1: Script([], status=404, error_code="model_not_found")}) as api:
        got = await _events_as_they_come(api, {"model": "no/such-model", "input": "Pelseldan?",
                                               "tools": [{"type": "web_search"}]})
    failed = got[-1]["response"]
    assert got[-1]["type"] == "response.failed" and failed["error"]["code"] == "model_not_found", failed
    assert "`no/such-model` does not exist" in failed["error"]["message"]


@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
async def test_a_search_that_fails_ends_its_item_failed_before_response_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    """A web search that fails (its retrieval miners' selection refuses it) fails the stream it opened: its
    ``web_search_call`` item was left ``in_progress``, with no ``output_item.done`` (every other open item gets
    its done events), and the background response's ``response.failed`` (and its stored record) said the search
    was still ``in_progress``. Now the item is done ``failed`` (a search call's status for one that did not
    finish), as the last event and the stored response have it."""
    async def refused(*_: object, **__: object) -> None:
        await asyncio.sleep(0.2)
        raise ApiError(400, "Unknown task 'web_retrieval'.", code="unknown_task", param="task")

    monkeypatch.setattr(web_search, "search", refused)
    with info_lines() as lines:
        async with api_with_miners(tmp_path, {1: miner_answering("Pelseldan is a city.")}) as api:
            body = {"model": "default", "input": "Pelseldan?", "tools": [{"type": "web_search"}],
                    "background": background}
            got = await _events_as_they_come(api, body)
            client = openai_client(api)
            async with client.responses.stream(**body) as events:  # the SDK's accumulator takes it
                sdk = [event async for event in events]
            stored = await client.responses.retrieve(got[0]["response"]["id"]) if background else None
            await wait_until(lambda: not api.ctx.running_responses, 5)
            api.ctx.request_log.flush()
    # its line says what every failed request's says, status=error and the code (it said status=unknown_task)
    kind = "responses.background" if background else "responses"
    ended = [line for line in lines if f"| api | {kind} rid=" in line]
    assert len(ended) == 2 and all(" uids=[] winner=None stream=True mixture=False status=error code=unknown_task "
                                   in line for line in ended), ended
    assert stream_faults(got) == []
    assert [e["type"] for e in got][-3:] == ["response.web_search_call.searching", "response.output_item.done",
                                             "response.failed"]
    assert got[-2]["item"]["status"] == "failed" and got[-2]["item"]["id"] == got[-1]["response"]["output"][0]["id"]
    assert sdk[-1].type == "response.failed" and [(o.type, o.status) for o in sdk[-1].response.output] == [
        ("web_search_call", "failed")]
    if stored is not None:
        assert stored.status == "failed" and [(o.type, o.status) for o in stored.output] == [
            ("web_search_call", "failed")]


async def test_a_search_does_not_wait_for_its_slowest_miner_and_still_scores_it(tmp_path: Path) -> None:
    """A retrieval miner that takes seconds no longer holds the chat answer back (it waited for the slowest,
    up to 10 s): once the first answer is in, the others get as long again. The slow one still answers,
    and its answer goes to scoring with the others'."""
    text = json.dumps([{"url": PAGE, "content": "Pelseldan is a city on the Zorgal river."}])
    fast = miner_answering(text)
    slow = Script([(1.0, d) for d in sse(chunk(text), chunk(finish="stop"))])  # 3 s in all: past the 2.5 s bound
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: fast, 2: slow}) as api:
        api.ctx.payload_sinks.append(payloads.append)
        client = AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0)
        started = time.monotonic()
        r = await client.responses.create(model="default", input="Tell me about Pelseldan",
                                          tools=[{"type": "web_search"}], include=["web_search_call.action.sources"])
        took = time.monotonic() - started
        assert [s.url for s in r.output[0].action.sources] == [PAGE], "the fast miner's results"
        for _ in range(100):  # the slow miner's answer, once it comes, is scored
            if any(p["kind"] == "web_retrieval" for p in payloads):
                break
            await asyncio.sleep(0.1)
    assert took < 2.5, f"the answer waited {took:.1f} s for the slow retrieval miner"
    (scored,) = [p for p in payloads if p["kind"] == "web_retrieval"]
    assert sorted(scored["uids"]) == [1, 2] and not scored["errors"], "both answers are scored"
    assert len(scored["chunks"]["2"]) == 2, "the slow miner's whole answer"
