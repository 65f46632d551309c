"""The race through the real API app and real HTTP miners: who wins, and what the client sees."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from neurons.miner.backends.deterministic import generate_text
from neurons.validator.scoring import REFUSAL_PREFIXES, rebuild_answer
from tests.helpers import ApiUnderTest, Script, api_with_miners, chunk, loop_gaps, openai_client, post, sse

MESSAGES = [{"role": "user", "content": "Race me"}]


def sse_datas(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def streamed_text(text: str) -> str:
    out = []
    for d in sse_datas(text):
        if d == "[DONE]":
            continue
        obj = json.loads(d)
        for c in obj.get("choices", []):
            out.append(c.get("delta", {}).get("content") or "")
    return "".join(out)


GOOD = "The slow but correct answer."


def slow_good(delay: float = 0.3) -> Script:
    return Script([(delay, d) for d in sse(chunk("The slow "), chunk("but correct answer."), chunk(finish="stop"))])


@pytest.mark.parametrize("stream", [False, True])
async def test_fast_garbage_miner_loses_to_slow_good_miner(tmp_path: Path, stream: bool) -> None:
    garbage = Script([(0, b"data: {not json\n\n"), (0, b"data: [DONE]\n\n")])
    empty = Script([(0, d) for d in sse(chunk(""), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: garbage, 2: empty, 3: slow_good()}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "stream": stream})
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == "3"
    content = streamed_text(text) if stream else json.loads(text)["choices"][0]["message"]["content"]
    assert content == GOOD


async def test_first_valid_stream_wins_and_is_passed_through_whole(tmp_path: Path) -> None:
    fast = Script([(0.01, d) for d in sse(chunk("fast "), chunk("answer"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: fast, 2: slow_good(0.5)}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "stream": True})
    assert status == 200 and headers["x-sn1-miner-uid"] == "1"
    assert streamed_text(text) == "fast answer"
    assert sse_datas(text)[-1] == "[DONE]"


async def test_real_deterministic_miner_answers_through_signed_path(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={5}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "seed": 7})
    assert status == 200, text
    body = json.loads(text)
    expected = generate_text({"messages": MESSAGES, "seed": 7, "task": "InferenceTask"})
    assert body["choices"][0]["message"]["content"] == expected
    assert headers["x-sn1-seed"] == "7"


async def test_winner_dying_mid_stream_ends_with_error_event_and_done(tmp_path: Path) -> None:
    dying = Script([(0, d) for d in sse(chunk("partial "), done=False)] + [(0.05, b'data: {"choi')], die=True)
    async with api_with_miners(tmp_path, {1: dying}) as api:
        started = time.monotonic()
        status, _, text = await post(api, {"messages": MESSAGES, "stream": True})
    assert status == 200
    assert time.monotonic() - started < 5
    datas = sse_datas(text)
    assert datas[-1] == "[DONE]"
    err = json.loads(datas[-2])
    assert err["error"]["code"] == "miner_failed_mid_stream"
    assert streamed_text("\n".join(f"data: {d}" for d in datas[:-2])) == "partial "


async def test_all_miners_fail_is_502_openai_shaped(tmp_path: Path) -> None:
    bad = Script([], status=500)
    garbage = Script([(0, b"data: nonsense\n\n")])
    async with api_with_miners(tmp_path, {1: bad, 2: garbage}) as api:
        status, _, text = await post(api, {"messages": MESSAGES})
    assert status == 502
    err = json.loads(text)["error"]
    assert err["code"] == "no_valid_answer" and err["type"] == "upstream_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_clean_empty_answer_is_the_answer_when_nobody_says_more(tmp_path: Path, stream: bool) -> None:
    """A model that stops at once answers "" with a finish_reason: the caller's answer, not a 502
    (which the OpenAI SDK would retry twice for the same ""). Silence without one is no answer."""
    empty = Script([(0.05, d) for d in sse(chunk(""), chunk(finish="stop"))])
    silent = Script([(0, b"data: [DONE]\n\n")])
    async with api_with_miners(tmp_path, {1: Script([], status=500), 2: silent, 3: empty}) as api:
        status, headers, text = await post(api, {"messages": MESSAGES, "stream": stream})
        assert status == 200 and headers["x-sn1-miner-uid"] == "3", text
        if stream:
            assert streamed_text(text) == "" and sse_datas(text)[-1] == "[DONE]"
            assert json.loads(sse_datas(text)[-2])["choices"][0]["finish_reason"] == "stop"
        else:
            choice = json.loads(text)["choices"][0]
            assert (choice["message"]["content"], choice["finish_reason"]) == ("", "stop")
        status, _, text = await post(api, {"messages": MESSAGES, "stream": stream, "uids": [1, 2]})
    assert status == 502 and json.loads(text)["error"]["code"] == "no_valid_answer"


@pytest.mark.parametrize("stream", [False, True])
async def test_deadline_is_504_within_deadline(tmp_path: Path, stream: bool) -> None:
    stall = Script([(0, b": hello\n\n"), (30, b"")])
    async with api_with_miners(tmp_path, {1: stall}) as api:
        started = time.monotonic()
        status, _, text = await post(api, {"messages": MESSAGES, "stream": stream, "timeout": 0.5})
        elapsed = time.monotonic() - started
    assert status == 504, text
    assert json.loads(text)["error"]["code"] == "deadline_exceeded"
    assert elapsed < 1.5


async def test_winner_stalling_after_first_chunk_is_cut_at_deadline(tmp_path: Path) -> None:
    stall = Script([(0, d) for d in sse(chunk("start "), done=False)] + [(30, b"")])
    async with api_with_miners(tmp_path, {1: stall}) as api:
        started = time.monotonic()
        status, _, text = await post(api, {"messages": MESSAGES, "stream": True, "timeout": 0.6})
    assert status == 200
    assert time.monotonic() - started < 2
    datas = sse_datas(text)
    assert datas[-1] == "[DONE]" and "error" in json.loads(datas[-2])


async def test_client_disconnect_cancels_miner_requests(tmp_path: Path) -> None:
    slow = Script([(0, d) for d in sse(chunk("tick "), done=False)] + [(0.2, sse(chunk("tick "), done=False)[0])] * 50)
    other = Script([(10, b"")])
    async with api_with_miners(tmp_path, {1: slow, 2: other}) as api:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(api.url + "/v1/chat/completions", headers={"api-key": api.key},
                                json={"messages": MESSAGES, "stream": True, "timeout": 30})
            await resp.content.readline()
            resp.close()  # the client goes away mid-stream
        for _ in range(50):
            if slow.active == 0 and other.active == 0:
                break
            await asyncio.sleep(0.02)
        assert slow.active == 0 and other.active == 0, "miner requests must be cancelled within 1 s"


async def test_organic_payload_attributes_chunks_per_uid(tmp_path: Path) -> None:
    a = Script([(0.01, d) for d in sse(chunk("A1 "), chunk("A2"), chunk(finish="stop"))])
    b = Script([(0.03, d) for d in sse(chunk("B1 "), chunk("B2"), chunk(finish="stop"))])
    got: list[dict] = []
    async with api_with_miners(tmp_path, {1: a, 2: b}) as api:

        def sink(payload: dict) -> None:
            got.append(payload)

        api.ctx.payload_sinks.append(sink)
        status, _, _ = await post(api, {"messages": MESSAGES, "stream": True, "seed": 3})
        assert status == 200
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
    assert got, "a scoring payload must be produced when the race settles"
    p = got[0]
    assert sorted(p["uids"]) == [1, 2] and p["body"]["seed"] == 3
    for uid, prefix in (("1", "A"), ("2", "B")):
        texts = [json.loads(c)["choices"][0]["delta"].get("content") or "" for c in p["chunks"][uid]]
        assert "".join(texts) == f"{prefix}1 {prefix}2"
        assert len(p["timings"][uid]) == len(p["chunks"][uid])
        assert p["timings"][uid] == sorted(p["timings"][uid])


async def test_bad_input_is_4xx_openai_shaped(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: slow_good(0)}) as api:
        cases = [
            b"{not json", b"[]", b'{"messages": []}', b'{"messages": "hi"}',
            b'{"messages": [{"role": "wizard", "content": "x"}]}',
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            b'{"messages": [{"role": "user", "content": "x"}], "uids": [-1]}',
            b'{"messages": [{"role": "user", "content": "x"}], "uids": [42]}',
            b"\xff\xfe", b"",
        ]
        async with aiohttp.ClientSession() as s:
            for raw in cases:
                async with s.post(api.url + "/v1/chat/completions", data=raw,
                                  headers={"api-key": api.key, "Content-Type": "application/json"}) as r:
                    body = await r.json()
                    assert r.status == 400, (raw, r.status, body)
                    assert set(body["error"]) == {"message", "type", "code", "param"}
            big = b'{"messages": [{"role": "user", "content": "' + b"x" * api.ctx.settings.max_body_bytes + b'"}]}'
            async with s.post(api.url + "/v1/chat/completions", data=big, headers={"api-key": api.key}) as r:
                assert r.status == 413
                assert "error" in await r.json()


async def test_non_finite_numbers_are_the_callers_400_and_reach_no_miner(tmp_path: Path) -> None:
    """NaN/Infinity are not JSON: accepted, they would reach the miner as null (orjson writes them so)
    and come back as the miner's 502 instead of the caller's 400."""
    script = slow_good(0)
    async with api_with_miners(tmp_path, {1: script}) as api:
        cases = [(b'"logit_bias": {"50256": NaN}', "logit_bias.50256"), (b'"temperature": Infinity', "temperature"),
                 (b'"metadata": {"score": -Infinity}', "metadata.score"), (b'"top_p": 1e999', "top_p")]
        async with aiohttp.ClientSession() as s:
            for field, param in cases:
                raw = b'{"messages": [{"role": "user", "content": "x"}], "uids": [1], ' + field + b"}"
                async with s.post(api.url + "/v1/chat/completions", data=raw, headers={"api-key": api.key}) as r:
                    body = await r.json()
                    assert r.status == 400, (field, r.status, body)
                    assert body["error"]["param"] == param and body["error"]["code"] == "invalid_value"
        assert script.calls == 0


USER = {"role": "user", "content": "x"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
REFUSED_UPSTREAM = [  # (extra request fields, the param the 400 names)
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "system", "content": None}, USER]}, "messages.0.content"),
    ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}, {"role": "tool", "content": "{}"}]},
     "messages.[2].tool_call_id"),  # OpenAI's param for it
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tools": [{"function": {"name": "get_weather"}}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools.0.function.name"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
]
ACCEPTED = [
    {"messages": [USER, {"role": "assistant"}, USER]},  # an assistant message may go without content
    {"logprobs": True, "top_logprobs": 3},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tool_choice": "auto"},
    # (a json_schema with a name and a schema is accepted too: the JSON tests below send one to a JSON miner)
]


async def test_requests_an_upstream_would_refuse_are_the_callers_400(tmp_path: Path) -> None:
    """OpenAI and model servers refuse these; relayed, the refusal would come back as a 502 for the
    caller and count against a miner that did nothing wrong."""
    script = slow_good(0)
    async with api_with_miners(tmp_path, {1: script}) as api:
        for fields, param in REFUSED_UPSTREAM:
            status, _, text = await post(api, {"messages": [USER], "uids": [1], **fields})
            body = json.loads(text)
            assert status == 400 and body["error"]["param"] == param, (fields, status, body)
        assert script.calls == 0
        for fields in ACCEPTED:
            status, _, text = await post(api, {"messages": [USER], "uids": [1], **fields})
            # accepted and sent on; the scripted text is no answer to a named tool_choice (a 502 saying so)
            assert status == 200 or (status == 502 and "requires a tool call" in text), (fields, text)
    assert script.calls == len(ACCEPTED)


def refusing(status: int = 400, code: str = "model_server_rejected") -> Script:
    return Script([], status=status, error_code=code)


@pytest.mark.parametrize(("scripts", "status", "code"), [
    ({1: "refuse", 2: "refuse"}, 400, "model_server_rejected"),  # every model server refused it: the caller's
    # a refusal quoting its model server at length (vLLM's validation errors quote the input) is one too: the
    # first 2 KiB of it, cut mid-JSON, was read as no error body, and the refusal as the miner's failure
    ({1: "refuse-long", 2: "refuse"}, 400, "model_server_rejected"),
    ({1: "refuse", 2: "fail"}, 502, "no_valid_answer"),  # one miner failed on its own: not the caller's
    ({1: "refuse", 2: "good"}, 200, None),  # another miner answered it
    ({1: "miner400", 2: "miner400"}, 502, "no_valid_answer"),  # a miner's own 400 (e.g. its auth check) is not
])
async def test_a_request_every_model_server_refused_is_the_callers_400(
        tmp_path: Path, scripts: dict[int, str], status: int, code: str | None) -> None:
    make = {"refuse": refusing, "fail": lambda: Script([], status=500), "good": lambda: slow_good(0),
            "refuse-long": lambda: Script([], status=400, error_code="model_server_rejected",
                                          error_message="upstream HTTP 400: " + "x" * 20_000),
            "miner400": lambda: refusing(400, "MalformedAuth")}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {uid: make[kind]() for uid, kind in scripts.items()}) as api:
        api.ctx.payload_sinks.append(payloads.append)
        for stream in (False, True):
            got, _, text = await post(api, {"messages": [USER], "stream": stream})
            assert got == status, (stream, text)
            if code:
                assert json.loads(text)["error"]["code"] == code
    # A request every model server refused is the caller's mistake: it is not scored (scored, it would be a
    # zero for each miner, and any key could sink honest miners' scores so). Any other outcome is scored.
    assert len(payloads) == (0 if code == "model_server_rejected" else 2)


@pytest.mark.parametrize("status", [401, 403, 429])
async def test_a_model_server_refusing_the_miner_itself_is_the_miners_failure_not_the_callers_400(
        tmp_path: Path, status: int) -> None:
    """A miner whose model server refuses its own key (401/403) or rate-limits it (429), relayed with
    ``model_server_rejected``: only 400/413/422 are the caller's (docs/miner-protocol.md §5). Taken as the caller's,
    such miners answered the caller a 400 for a request nothing was wrong with, were never set aside, and were not
    scored (no payload; the validator reads ``HTTP 401``/``HTTP 403`` as a refused signature)."""
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: refusing(status), 2: refusing(status)},
                               miner_failures_to_set_aside=2) as api:
        api.ctx.payload_sinks.append(payloads.append)
        for stream in (False, True):
            got, _, text = await post(api, {"messages": [USER], "stream": stream})
            assert (got, json.loads(text)["error"]["code"]) == (502, "no_valid_answer"), (stream, text)
        assert api.ctx.miner_health is not None and set(api.ctx.miner_health.aside) == {1, 2}
    assert len(payloads) == 2  # scored: a 0 for each
    errors = [e for p in payloads for e in p["errors"].values()]
    assert len(errors) == 4 and not any(e.startswith(REFUSAL_PREFIXES) for e in errors), errors
    assert {k for p in payloads for k in p["error_kinds"].values()} == {"http_4xx"}


@pytest.mark.parametrize("listed", [False, True], ids=["never-listed", "listed"])
async def test_a_miner_raced_for_a_model_it_never_listed_is_not_scored_for_its_404(tmp_path: Path, listed: bool) -> None:
    """Without fresh availability the API races every serving miner, whatever the model; a miner that answers
    ``404 model_not_found`` for a model it never listed did nothing wrong, and was scored a 0 for it (each
    such request, for every miner but those serving the model). One that listed the model is scored so."""
    from api.availability import AvailabilityCache

    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {}, honest={1, 2}) as api:  # the deterministic miners' reference miner
        api.ctx.payload_sinks.append(payloads.append)
        if listed:  # fresh availability: uid 1 says it serves the model (and then does not)
            cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "-")
            cache.entries = {uid: {"task_availabilities": {"InferenceTask": True},
                                   "llm_model_availabilities": {"other/model": uid == 1}} for uid in (1, 2)}
            cache.refreshed_at = time.monotonic()
            api.ctx.availability = cache
        status, _, text = await post(api, {"model": "other/model", "messages": [USER]})
        assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found", text
        await asyncio.sleep(0.2)
    if listed:
        assert [p["uids"] for p in payloads] == [[1]] and "model_not_found" in payloads[0]["errors"]["1"]
    else:
        assert payloads == []


UNKNOWN_MODEL = {"message": "The model `gone/model` does not exist or you do not have access to it.",
                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
ASKING_FOR_GONE_MODEL = [
    ("/v1/chat/completions", {"model": "gone/model", "messages": [USER]}),
    ("/v1/chat/completions", {"model": "gone/model", "messages": [USER], "stream": True}),
    ("/v1/chat/completions", {"model": "gone/model", "messages": [USER], "n": 2}),
    ("/v1/completions", {"model": "gone/model", "prompt": "Say hi"}),
    ("/v1/responses", {"model": "gone/model", "input": "Say hi"}),
    ("/v1/responses", {"model": "gone/model", "input": "Say hi", "stream": True}),
]


async def test_a_model_no_raced_miner_serves_is_openais_404(tmp_path: Path) -> None:
    """Without fresh availability (or for a model miners listed and serve no more) the API races miners that
    each answer ``404 model_not_found``: the caller got a ``502 no_valid_answer``, which the SDKs retry twice
    and which read as the subnet failing. It is OpenAI's 404 now, on every route that races miners; but not
    when another miner failed on its own (it might have served the model) or answered."""
    make = {"404": lambda: refusing(404, "model_not_found"), "fail": lambda: Script([], status=500),
            "good": lambda: slow_good(0)}
    for scripts, status in [({1: "404", 2: "404"}, 404), ({1: "404", 2: "fail"}, 502), ({1: "404", 2: "good"}, 200)]:
        # no miner set aside for its failures (``MinerHealth``): each request races both, the race this is about
        async with api_with_miners(tmp_path, {uid: make[kind]() for uid, kind in scripts.items()},
                                   miner_failures_to_set_aside=0) as api:
            for path, body in ASKING_FOR_GONE_MODEL:
                got, _, text = await post(api, body, path=path)
                assert got == status, (scripts, path, body, text)
                if status == 404:
                    assert json.loads(text)["error"] == UNKNOWN_MODEL, (path, text)
            got, _, text = await post(api, {"model": "gone/model", "messages": [USER], "mixture": True})
            assert got == status, text
            if status == 404:  # said of the mixture's first stage
                error = json.loads(text)["error"]
                assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model",
                                                                          "invalid_request_error"), error
            # a caller's unknown model is no outage of the miners: no "requests no miner answers" WARNING run
            assert api.ctx.no_answer.failing == (status == 502), scripts


async def test_the_openai_sdk_raises_not_found_for_a_model_no_miner_serves(tmp_path: Path) -> None:
    import openai

    async with api_with_miners(tmp_path, {1: refusing(404, "model_not_found")}) as api:
        client = openai_client(api)
        with pytest.raises(openai.NotFoundError) as chat:
            await client.chat.completions.create(model="gone/model", messages=[USER])
        with pytest.raises(openai.NotFoundError) as responses:
            await client.responses.create(model="gone/model", input="Say hi")
        await client.close()
    for e in (chat.value, responses.value):
        assert (e.code, e.param, e.type) == ("model_not_found", "model", "invalid_request_error")
        assert e.message.endswith("The model `gone/model` does not exist or you do not have access to it.")


@pytest.mark.parametrize(("timeout", "scored"), [(None, [1, 2]), (0.6, [1])], ids=["node-deadline", "callers-shorter"])
async def test_a_miner_cut_off_by_a_callers_shorter_timeout_is_not_scored(
        tmp_path: Path, timeout: float | None, scored: list[int]) -> None:
    """A miner that runs out of the node's own deadline is scored (its error, a zero); one that runs out of
    a caller's shorter ``timeout`` is left out: any key could otherwise zero honest miners with a short one."""
    payloads: list[dict] = []
    scripts = {1: slow_good(0), 2: slow_good(1.5)}
    async with api_with_miners(tmp_path, scripts, request_timeout=1.0) as api:
        api.ctx.payload_sinks.append(payloads.append)
        body = {"messages": [USER]} | ({"timeout": timeout} if timeout else {})
        status, _, _ = await post(api, body)
        assert status == 200
        for _ in range(150):  # the slow miner ends at the deadline, then the race settles
            if payloads:
                break
            await asyncio.sleep(0.02)
    (payload,) = payloads
    assert sorted(payload["uids"]) == scored
    assert ("2" in payload["errors"]) == (2 in scored), "the cut-off miner's error goes only where it is scored"


async def test_a_race_the_callers_timeout_cut_off_entirely_is_not_scored(tmp_path: Path) -> None:
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: slow_good(1.5)}, request_timeout=1.0) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, _, text = await post(api, {"messages": [USER], "timeout": 0.6})
        assert status == 504, text
        await asyncio.sleep(0.2)
    assert payloads == []


async def test_a_retrieval_miner_cut_off_by_a_callers_shorter_time_is_not_scored(tmp_path: Path) -> None:
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: slow_good(0), 2: slow_good(1.5)}) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, _, _ = await post(api, {"search_query": "rivers", "n_miners": 2, "max_response_time": 0.6},
                                  path="/web_retrieval")
        assert status in (200, 502)  # a scripted chat answer is no result list: either way, not the point here
        await asyncio.sleep(0.1)
    (payload,) = payloads
    assert payload["uids"] == [1], "the miner that ran out of the caller's 0.6 s is left out"


def tool_calling(name: str, delay: float = 0.0) -> Script:
    def call(**delta: Any) -> str:
        return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    first = call(role="assistant", tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                                "function": {"name": name, "arguments": ""}}])
    rest = call(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}])
    return Script([(delay, d) for d in sse(first, rest, chunk(finish="tool_calls"))])


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(("fields", "called", "wins"), [
    ({}, "get_weather", 2),  # no tools offered: any tool call is garbage
    ({"tools": WEATHER}, "delete_everything", 2),  # a tool that was not offered
    ({"tools": WEATHER}, "get_weather_and_more", 2),  # an offered name's extension is another name
    ({"tools": WEATHER, "tool_choice": "none"}, "get_weather", 2),  # tools offered but not to be called
    ({"tools": WEATHER}, "", 2),  # a call without a name: streamed, it claimed the race, then failed mid-stream
    ({"tools": WEATHER}, "get_weather", 1),  # a call of an offered tool is a valid answer: the fast one wins
], ids=["no-tools", "unoffered", "longer-name", "tool-choice-none", "no-name", "offered"])
@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_call_of_a_tool_the_request_did_not_offer_never_wins(
        tmp_path: Path, fields: dict, called: str, wins: int, stream: bool) -> None:
    """A fast miner could win every race with a made-up tool call (the caller's app then gets a call of a
    function it never defined); only calls of the tools the request offers count as answers."""
    scripts = {1: tool_calling(called), 2: slow_good(0.3)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, headers, text = await post(api, {"messages": [USER], "stream": stream, **fields})
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == str(wins)


def calling(name: str, arguments: str | list[tuple[str, str]], delay: float = 0.0) -> Script:
    """A miner that answers with tool calls: one of ``name`` with ``arguments``, or one per (name, arguments)."""
    pairs = [(name, arguments)] if isinstance(arguments, str) else arguments
    calls = [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
             for i, (n, a) in enumerate(pairs)]
    first = json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": calls},
                                     "finish_reason": None}]})
    return Script([(delay, d) for d in sse(first, chunk(finish="tool_calls"))])


STRICT_WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(("fields", "fast", "wins"), [
    ({}, calling("get_weather", '{"city": "Par'), 2),  # cut JSON: the SDK's json.loads raises on it
    ({}, calling("get_time", "[1, 2]"), 2),  # JSON, but no object of arguments
    ({}, calling("get_weather", '{"town": "Paris"}'), 2),  # misses a strict function's parameters
    ({}, calling("get_time", '{"anything": 1}'), 1),  # a function that is not strict: its schema is a guide
    ({}, calling("get_time", ""), 1),  # no arguments at all: taken as {} (as the SDKs take them)
    ({"parallel_tool_calls": False}, calling("", [("get_time", "{}"), ("get_time", "{}")]), 2),
    ({}, calling("", [("get_time", "{}"), ("get_time", "{}")]), 1),  # parallel calls are allowed by default
], ids=["cut-json", "not-an-object", "strict-misfit", "loose-misfit", "empty", "parallel-false", "parallel"])
@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_tool_call_whose_arguments_the_caller_cannot_use_never_wins(
        tmp_path: Path, fields: dict, fast: Script, wins: int, stream: bool) -> None:
    """The caller's agent loop parses a call's arguments (the OpenAI SDK's ``parse``, the Agents SDK, LangChain):
    a fast miner whose arguments are not a JSON object, or miss a strict function's parameters, won the race,
    and the agent raised, while another miner had a call it could run. Streamed too: an answer of calls alone
    is relayed once they are whole and usable."""
    scripts = {1: fast, 2: calling("get_weather", '{"city": "Paris"}', delay=0.3)}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, scripts) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, headers, text = await post(api, {"messages": [USER], "tools": STRICT_WEATHER, "stream": stream,
                                                 **fields})
        await asyncio.sleep(0.1)
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == str(wins)
    assert '"error"' not in text
    assert payloads and payloads[0]["errors"] == {}, "the validator judges the answer as before (not a zero)"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_a_miner_sending_thousands_of_tool_calls_does_not_hold_the_apis_event_loop(
        tmp_path: Path, stream: bool) -> None:
    """Each new call's id was checked against every earlier call's: 20,000 calls in one chunk cost 200 million
    comparisons (15,000: 112 million), a minute of the worker's event loop, while every other request on it waited."""
    flood = calling("", [("get_time", "{}")] * 15_000)  # 1.5 MB: within the miner client's 2 MiB
    async with api_with_miners(tmp_path, {1: flood}) as api:
        async with loop_gaps(0.01) as gaps:
            status, _, text = await post(api, {"messages": [USER], "tools": STRICT_WEATHER, "stream": stream})
    assert status == 200, text[:500]
    assert text.count('"get_time"') == 15_000
    assert max(gaps) < 2.0, f"the event loop held for {max(gaps):.1f}s"


async def test_no_tool_call_the_caller_can_use_is_a_502_naming_why(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: calling("get_weather", "{'city': 'Paris'}")}) as api:
        status, _, text = await post(api, {"messages": [USER], "tools": STRICT_WEATHER})
    assert status == 502, text
    assert "the arguments of the call to 'get_weather' are not JSON" in json.loads(text)["error"]["message"]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_text_never_wins_a_race_whose_tool_choice_requires_a_call(
        tmp_path: Path, choice: str | dict, stream: bool) -> None:
    """``tool_choice`` "required" or a named function obliges a call (a model server constrains its output to
    one): a fast miner's prose won the race, and the caller's agent loop, expecting a call, got text. Streamed,
    the prose fails at its first word, as prose does in JSON mode."""
    fast = Script([(0, d) for d in sse(chunk(" "), chunk("I would rather"), chunk(" chat."), chunk(finish="stop"))])
    scripts = {1: fast, 2: calling("get_weather", '{"city": "Paris"}', delay=0.3)}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, scripts) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, headers, text = await post(api, {"messages": [USER], "tools": STRICT_WEATHER, "stream": stream,
                                                 "tool_choice": choice})
        await asyncio.sleep(0.1)
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == "2" and "rather" not in text and "get_weather" in text
    assert payloads and payloads[0]["errors"] == {}, "the text is judged as before, not zeroed"
    answer = rebuild_answer(payloads[0]["chunks"]["1"], payloads[0]["timings"]["1"], None)
    assert answer.text == " I would rather chat.", "the whole text, not cut at its first word"


def answering(text: str, delay: float) -> Script:
    return Script([(delay, d) for d in sse(chunk(text), chunk(finish="stop"))])


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
        "additionalProperties": False}


@pytest.mark.parametrize(("response_format", "fast", "wins"), [
    ({"type": "json_object"}, "Sure! Paris.", 2),  # prose where JSON was asked for
    ({"type": "json_object"}, '{"town": "Paris"}', 1),  # JSON: the fast one is an answer
    ({"type": "json_schema", "json_schema": {"name": "c", "strict": True, "schema": CITY}}, '{"town": "Paris"}', 2),
    ({"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}}, '{"town": "Paris"}', 1),  # not strict
    ({"type": "text"}, "Sure! Paris.", 1),
], ids=["prose-for-json", "json", "strict-schema-misfit", "loose-schema-misfit", "text"])
async def test_a_whole_answer_must_be_the_json_the_request_asked_for(
        tmp_path: Path, response_format: dict, fast: str, wins: int) -> None:
    scripts = {1: answering(fast, 0), 2: answering('{"city": "Paris"}', 0.3)}
    async with api_with_miners(tmp_path, scripts) as api:
        status, headers, text = await post(api, {"messages": [USER], "uids": [1, 2],
                                                 "response_format": response_format})
    assert status == 200, text
    assert headers["x-sn1-miner-uid"] == str(wins)
    if wins == 2:
        assert json.loads(json.loads(text)["choices"][0]["message"]["content"]) == {"city": "Paris"}


async def test_no_answer_in_the_json_asked_for_is_a_502_naming_why(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: answering("Paris, of course.", 0)}) as api:
        status, _, text = await post(api, {"messages": [USER], "response_format": {"type": "json_object"}})
    assert status == 502 and "not the JSON the request asked for" in json.loads(text)["error"]["message"]


async def test_an_answer_that_misses_the_format_is_scored_on_its_text_not_zeroed(tmp_path: Path) -> None:
    """A strict schema no JSON can fit fails every miner for the caller (a 502), but the validator judges
    their text against its reference: marked as errors, they would all be zeros, which a key could send on
    purpose."""
    impossible = {"type": "object", "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}},
                  "required": ["a"]}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, {1: answering('{"a": "abc"}', 0)}) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, _, _ = await post(api, {"messages": [USER], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": impossible}}})
        await asyncio.sleep(0.1)
    assert status == 502
    (payload,) = payloads
    assert payload["uids"] == [1] and payload["errors"] == {} and payload["chunks"]["1"]


@pytest.mark.parametrize("stream", [False, True], ids=["object", "stream"])
async def test_prose_where_json_was_asked_never_wins_even_streamed(tmp_path: Path, stream: bool) -> None:
    """A stream is relayed from its first content, so it cannot wait for a whole answer to check; but JSON
    mode answers an object, so prose shows at its first words: that miner fails there and the JSON one wins."""
    fast = Script([(0, d) for d in sse(chunk("  "), chunk("Sure! "), chunk("Paris."), chunk(finish="stop"))])
    scripts = {1: fast, 2: answering('{"city": "Paris"}', 0.3)}
    payloads: list[dict] = []
    async with api_with_miners(tmp_path, scripts) as api:
        api.ctx.payload_sinks.append(payloads.append)
        status, headers, text = await post(api, {"messages": [USER], "stream": stream,
                                                 "response_format": {"type": "json_object"}})
        await asyncio.sleep(0.1)
    assert status == 200 and headers["x-sn1-miner-uid"] == "2", text
    assert '{\\"city\\": \\"Paris\\"}' in text and "Sure!" not in text
    assert payloads and "1" not in payloads[0]["errors"], "the prose is scored on its text, not as an error"
    # and on its whole text: cut at its first word, the validator read it as an empty answer (a zero)
    assert rebuild_answer(payloads[0]["chunks"]["1"], payloads[0]["timings"]["1"], None).text == "  Sure! Paris."


async def test_a_streamed_array_for_an_array_schema_is_an_answer(tmp_path: Path) -> None:
    schema = {"type": "array", "items": {"type": "string"}}
    async with api_with_miners(tmp_path, {1: answering('["Paris", "Rome"]', 0)}) as api:
        status, headers, text = await post(api, {"messages": [USER], "stream": True, "response_format": {
            "type": "json_schema", "json_schema": {"name": "cities", "strict": True, "schema": schema}}})
    assert status == 200 and "Paris" in text and "error" not in text, text


async def test_a_strict_schema_that_chooses_itself_is_left_to_the_model_server_not_a_500(tmp_path: Path) -> None:
    """jsonschema recursed without end checking an answer against ``anyOf`` naming its own schema: the check
    raised RecursionError on the API's path. A schema the validator cannot walk is not checked, as one it
    cannot read."""
    chooses_itself = {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}, "$ref": "#/$defs/A"}
    async with api_with_miners(tmp_path, {1: answering('{"city": "Paris"}', 0)}) as api:
        for stream in (False, True):
            status, _, text = await post(api, {"messages": [USER], "stream": stream, "response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": chooses_itself}}})
            assert status == 200 and "Paris" in text, (stream, status, text)


async def test_a_responses_shaped_tool_in_chat_is_a_400_showing_the_chat_shape(honest: ApiUnderTest) -> None:
    """``{"type": "function", "name": ..., "parameters": ...}`` (the Responses API's) was OpenAI's bare
    "Missing required parameter: 'tools.0.function'", which did not say the definition was there, flat."""
    flat = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    status, _, text = await post(honest, {"messages": [USER], "tools": [flat]})
    error = json.loads(text)["error"]
    assert (status, error["param"], error["code"]) == (400, "tools.0.function", "missing_required_parameter")
    assert error["message"].startswith("Missing required parameter: 'tools[0].function'.")
    assert '{"type": "function", "function": {"name": ' in error["message"] and "/v1/responses" in error["message"]


RESPONSES_ONLY = [  # (a Responses API field, a value that asks for something, what the 400 says to send instead)
    ("instructions", "Answer in French.", "'system'"),
    ("max_output_tokens", 5, "'max_tokens'"),
    ("text", {"format": {"type": "json_object"}}, "'response_format'"),
    ("input", "Hi", "'messages'"),
    ("previous_response_id", "resp_1", "/v1/responses"),
    ("conversation", "conv_1", "/v1/responses"),
]


@pytest.mark.parametrize(("field", "value", "instead"), RESPONSES_ONLY, ids=[c[0] for c in RESPONSES_ONLY])
async def test_responses_fields_in_chat_are_a_400_saying_what_chat_takes(honest: ApiUnderTest, field: str,
                                                                         value: Any, instead: str) -> None:
    """Passed on as unknown fields, each was ignored in silence: instructions lost, an answer uncut by
    max_output_tokens 5, prose for a JSON text.format, a conversation continued from nothing."""
    status, _, text = await post(honest, {"messages": [USER], field: value})
    error = json.loads(text)["error"]
    assert (status, error["param"], error["code"]) == (400, field, "unsupported_parameter"), error
    assert error["message"].startswith(f"Unsupported parameter: '{field}'.") and instead in error["message"]
    status, _, text = await post(honest, {"messages": [USER], field: None})
    assert status == 200, text


async def test_a_mixture_of_many_named_miners_and_a_large_body_is_the_callers_400(tmp_path: Path) -> None:
    """Each of a mixture's first-stage miners is sent a body of its own (its own seed): 20 named miners and a
    4 MiB image made 80 MiB of copies at once (256 of them 1 GiB, and 1.6 s of the event loop), whatever the
    miners did. Past ``MIXTURE_STAGE_BYTES`` it is the caller's 400 naming ``uids``, before any miner is asked; a
    few named miners with the same body are still asked."""
    image = "data:image/png;base64," + "A" * ((4 << 20) - 4096)
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image}}]
    many = set(range(3, 23))
    async with api_with_miners(tmp_path, {}, honest={1, 2}, unlistened=many) as api:
        body = {"messages": [{"role": "user", "content": content}], "mixture": True, "seed": 1}
        status, _, text = await post(api, {**body, "uids": sorted(many)})
        assert status == 400, text[:300]
        error = json.loads(text)["error"]
        assert error["param"] == "uids" and "20 " in error["message"], error
        status, _, text = await post(api, {**body, "uids": [1, 2]}, timeout=60)
        assert status == 200, text[:300]
