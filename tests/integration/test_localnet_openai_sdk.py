"""The OpenAI SDK against a real local subnet: the issue's "done when" flows."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel


def client(info: dict, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=info["api_url"] + "/v1", api_key=info["api_key"], max_retries=0, timeout=30, **kw)


def test_non_streaming_completion(localnet: dict) -> None:
    resp = client(localnet).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "Hello"}]
    )
    completion = resp.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "sn1/deterministic"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    uid = int(resp.headers["x-sn1-miner-uid"])
    assert uid in {m["uid"] for m in localnet["miners"]}
    assert resp.headers["x-request-id"]


def test_streaming_completion_with_api_key_header(localnet: dict) -> None:
    c = client(localnet, default_headers={"api-key": localnet["api_key"]})
    stream = c.chat.completions.create(
        model="sn1/deterministic", messages=[{"role": "user", "content": "Stream please"}], stream=True
    )
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    text = "".join(pieces)
    assert len([p for p in pieces if p]) > 3
    assert text.endswith(".")


def test_subnet_extras_and_seed_are_deterministic(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(
        model="sn1/deterministic",
        messages=[{"role": "user", "content": "How are you?"}],
        temperature=0.7,
        seed=42,
        extra_body={"task": "InferenceTask", "sampling_parameters": {"mixture": False, "max_new_tokens": 256,
                                                                      "do_sample": True}},
    )
    first = c.chat.completions.create(**kwargs).choices[0].message.content
    second = c.chat.completions.create(**kwargs).choices[0].message.content
    other = c.chat.completions.create(**{**kwargs, "seed": 43}).choices[0].message.content
    assert first == second, "same messages + seed + sampling must give the same answer"
    assert first != other


def test_max_tokens_reaches_the_miner(localnet: dict) -> None:
    out = client(localnet).chat.completions.create(
        model="default", messages=[{"role": "user", "content": "short"}], max_tokens=5
    )
    assert len(out.choices[0].message.content.split()) == 5
    assert out.choices[0].finish_reason == "length"


def test_stop_ends_the_answer_before_the_sequence(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(model="default", seed=5, messages=[{"role": "user", "content": "Hello"}])
    full = c.chat.completions.create(**kwargs).choices[0].message.content
    stop = " " + full.split()[2]
    choice = c.chat.completions.create(**kwargs, stop=[stop]).choices[0]
    assert choice.message.content == full[: full.index(stop)] and choice.finish_reason == "stop"


def test_logprobs_come_in_openai_shape_and_agree_streamed_or_not(localnet: dict) -> None:
    c = client(localnet)
    kwargs = dict(model="default", seed=9, messages=[{"role": "user", "content": "Hello"}], logprobs=True,
                  top_logprobs=3)
    choice = c.chat.completions.create(**kwargs).choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob < 0 and bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[1].logprob < t.logprob
    streamed = [t for ch in c.chat.completions.create(**kwargs, stream=True)
                if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in tokens]
    assert c.chat.completions.create(**{**kwargs, "logprobs": False, "top_logprobs": None}).choices[0].logprobs is None


def test_an_endpoint_this_api_lacks_is_a_404_naming_it(localnet: dict) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).embeddings.create(model="default", input="hi")
    assert "Invalid URL (POST /v1/embeddings)" in e.value.message
    # OpenAI's stored chat completions: a 405 "use POST" read as if the listing existed, an untyped error
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).chat.completions.list()
    assert "Invalid URL (GET /v1/chat/completions)" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client(localnet).chat.completions.retrieve("chatcmpl-1")


def test_unknown_model_is_404_model_not_found(localnet: dict) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(localnet).chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"


def test_unknown_uid_is_400(localnet: dict) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(localnet).chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}],
                                                 extra_body={"uids": [999]})
    assert "999" in e.value.message


def test_bad_key_is_401(localnet: dict) -> None:
    c = openai.OpenAI(base_url=localnet["api_url"] + "/v1", api_key="sn1-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}])


def test_explicit_uid_answers_and_is_reported(localnet: dict) -> None:
    uid = localnet["miners"][1]["uid"]
    resp = client(localnet).chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "x"}], extra_body={"uids": [uid]}
    )
    assert resp.headers["x-sn1-miner-uid"] == str(uid)


def test_localnet_json_lists_everything(localnet: dict) -> None:
    with open(f"{localnet['dir']}/localnet.json") as f:
        data = json.load(f)
    assert set(data) >= {"api_url", "validator_url", "admin_key", "api_key", "miners"}
    assert all(set(m) >= {"uid", "hotkey", "url", "backend"} for m in data["miners"])
    for m in data["miners"]:
        with urllib.request.urlopen(m["url"] + "/health", timeout=5) as r:
            assert r.status == 200


def test_subnet_doc_example_async_streaming_with_mixture_on_and_off(localnet: dict) -> None:
    """The subnet doc's own example: AsyncOpenAI, api-key header, stream, extra_body with mixture."""
    import asyncio

    async def run(mixture: bool) -> str:
        headers = {"api-key": localnet["api_key"], "Content-Type": "application/json"}
        client = openai.AsyncOpenAI(
            base_url=localnet["api_url"] + "/v1", max_retries=0,
            timeout=openai.Timeout(30, connect=10, read=20),
            http_client=openai.DefaultAsyncHttpxClient(headers=headers), api_key=localnet["api_key"],
        )
        result = await client.chat.completions.create(
            model="sn1/deterministic", messages=[{"role": "user", "content": "How are you?"}], stream=True,
            temperature=0.7, seed=42, extra_headers=headers,
            extra_body={"task": "InferenceTask",
                        "sampling_parameters": {"mixture": mixture, "max_new_tokens": 256, "do_sample": True}},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in result if c.choices])
        await client.close()
        return text

    plain, mixed = asyncio.run(run(False)), asyncio.run(run(True))
    assert plain and mixed
    assert plain != mixed, "the mixture answer is generated from a synthesis prompt, not the plain one"


def test_web_retrieval_returns_deduplicated_results_from_the_local_corpus(localnet: dict) -> None:
    """The README's curl: miners search the same offline corpus the validator verifies against."""
    from shared.corpus import BASE_URL, builtin_corpus
    from shared.urls import normalise_url

    doc = builtin_corpus().documents[0]
    query = urllib.parse.urlencode({"search_query": doc.title, "n_miners": 3, "n_results": 5})
    req = urllib.request.Request(f"{localnet['api_url']}/web_retrieval?{query}",
                                 headers={"api-key": localnet["api_key"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        results = json.loads(r.read())["results"]
    assert 1 <= len(results) <= 5
    urls = [normalise_url(x["url"]) for x in results]
    assert len(set(urls)) == len(urls), "results are de-duplicated by URL"
    assert all(x["url"].startswith(BASE_URL) and x["content"] for x in results)
    assert any(x["url"] == doc.url for x in results), "the document matching the query is found"


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str


def test_with_streaming_response_gives_the_headers_then_the_body_as_it_comes(localnet: dict) -> None:
    """``with_streaming_response`` (the SDK's way to read headers before the body, streamed or not): the subnet's
    headers are there before a byte of the answer is read, and the body is what ``create`` would have parsed."""
    c = client(localnet)
    asked = dict(model="sn1/deterministic", seed=3, messages=[{"role": "user", "content": "Hello"}])
    with c.chat.completions.with_streaming_response.create(**asked, stream=True) as r:
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-sn1-miner-uid"]
        frames = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    streamed = "".join(ChatCompletionChunk.model_validate_json(f).choices[0].delta.content or "" for f in frames[:-1])
    with c.chat.completions.with_streaming_response.create(**asked) as r:
        assert r.headers["x-sn1-seed"] == "3"
        whole = r.parse()
    assert whole.choices[0].message.content == streamed == c.chat.completions.create(**asked).choices[0].message.content


def test_the_sdks_stream_helper_parses_a_strict_tools_arguments(localnet: dict) -> None:
    """``client.chat.completions.stream`` with ``pydantic_function_tool`` (strict): the arguments' ``done`` event and
    the final completion carry them parsed into the model, as they would from OpenAI."""
    with client(localnet).chat.completions.stream(
            model="sn1/deterministic", messages=[{"role": "user", "content": 'The weather in city "Oslo"?'}],
            tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required") as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.parsed_arguments for e in done] == [GetWeather(city="Oslo")]
    (call,) = final.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Oslo") and final.choices[0].finish_reason == "tool_calls"


def test_langchain_runs_a_tool_loop_and_streams_its_events(localnet: dict) -> None:
    """LangChain on chat completions: ``bind_tools`` and a loop that runs each call and sends its ``ToolMessage``
    back ends on an answer; ``astream_events`` (v2) gives the model's start, stream and end, the end holding the
    call; ``with_structured_output(method="function_calling")`` parses the forced call."""
    import asyncio

    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"21 C in {city}"

    def llm() -> ChatOpenAI:
        return ChatOpenAI(model="sn1/deterministic", base_url=localnet["api_url"] + "/v1",
                          api_key=localnet["api_key"], max_retries=0, stream_usage=True)

    bound = llm().bind_tools([get_weather])
    messages: list = [HumanMessage('What is the weather in city "Paris"?')]
    for _ in range(3):
        answer = bound.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            break
        messages += [get_weather.invoke(call) for call in answer.tool_calls]
    assert [m.type for m in messages] == ["human", "ai", "tool", "ai"] and messages[-1].content
    assert messages[2].content == "21 C in Paris"

    async def events() -> tuple[dict[str, int], object]:
        kinds: dict[str, int] = {}
        end = None
        async for event in llm().bind_tools([get_weather]).astream_events("weather in Paris", version="v2"):
            kinds[event["event"]] = kinds.get(event["event"], 0) + 1
            end = event["data"]["output"] if event["event"] == "on_chat_model_end" else end
        return kinds, end

    kinds, end = asyncio.run(events())
    assert kinds["on_chat_model_start"] == kinds["on_chat_model_end"] == 1 and kinds["on_chat_model_stream"] > 1
    assert [c["name"] for c in end.tool_calls] == ["get_weather"] and end.usage_metadata["total_tokens"] > 0
    assert llm().with_structured_output(GetWeather, method="function_calling").invoke('city "Rome"') == \
        GetWeather(city="Rome")


def test_the_sdk_retries_a_busy_keys_429_after_its_retry_after_and_never_a_400(localnet: dict) -> None:
    """The OpenAI SDK's own retries, as an app leaves them on: a burst past the key's ``max_concurrent_requests``
    is answered 429 with ``Retry-After`` (and ``retry-after-ms``), which the SDK waits out and sends again, so every
    call of the burst succeeds; a 400 (the caller's) and a 404 are sent once, not retried."""
    import asyncio

    import httpx

    made = urllib.request.Request(localnet["api_url"] + "/api_management/create-api-key/", method="POST",
                                  data=json.dumps({"rate_limit": 600, "max_concurrent_requests": 4}).encode(),
                                  headers={"admin-key": localnet["admin_key"], "Content-Type": "application/json"})
    with urllib.request.urlopen(made, timeout=10) as r:
        key = json.load(r)["api_key"]
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async def burst() -> tuple[list, list[Exception]]:
        http = httpx.AsyncClient(event_hooks={"request": [count]}, timeout=30)
        c = openai.AsyncOpenAI(base_url=localnet["api_url"] + "/v1", api_key=key, max_retries=4, http_client=http)
        answers = await asyncio.gather(*[c.chat.completions.with_raw_response.create(
            model="sn1/deterministic", messages=[{"role": "user", "content": f"Question {i}"}]) for i in range(12)])
        refused = []
        for bad in (dict(model="sn1/deterministic", n=9), dict(model="no/such-model")):
            try:
                await c.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **bad)
            except openai.APIStatusError as e:
                refused.append(e)
        await c.close()
        return answers, refused

    answers, refused = asyncio.run(burst())
    assert all(a.parse().choices[0].message.content for a in answers)
    retried = sum(a.retries_taken for a in answers)
    assert retried >= 1, "12 calls at once on a key that takes 4 in flight: some were refused and sent again"
    assert [(type(e), e.status_code) for e in refused] == [(openai.BadRequestError, 400), (openai.NotFoundError, 404)]
    assert len(sent) == 12 + retried + 2, "each 400 and 404 was sent once"
