"""The Responses API (``POST /v1/responses``) against a real local subnet, through the SDKs that use it."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from tests.integration.test_localnet_openai_sdk import client
from tests.keys.procs import start_api, stop_on_redis, wait_ready
from tests.store.conftest import NO_REDIS

MODEL = "sn1/deterministic"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_a_response_and_its_stream_say_the_same(localnet: dict) -> None:
    c = client(localnet)
    raw = c.responses.with_raw_response.create(model=MODEL, input="Hello there", instructions="Be brief", extra_body={"seed": 5})
    whole = raw.parse()
    assert whole.status == "completed" and whole.output_text and whole.model == MODEL
    assert whole.usage is not None and whole.usage.output_tokens > 0
    assert int(raw.headers["x-sn1-miner-uid"]) in {m["uid"] for m in localnet["miners"]}
    with c.responses.stream(model=MODEL, input="Hello there", instructions="Be brief", extra_body={"seed": 5}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 3 and "".join(deltas) == final.output_text == whole.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens > 0


def test_log_probabilities_come_with_the_text_streamed_or_not(localnet: dict) -> None:
    c = client(localnet)
    asked = {"model": MODEL, "input": "Hello there", "include": ["message.output_text.logprobs"], "top_logprobs": 2,
             "extra_body": {"seed": 4}}
    part = c.responses.create(**asked).output[0].content[0]
    assert "".join(t.token for t in part.logprobs) == part.text
    assert all(t.logprob < 0 and len(t.top_logprobs) == 2 for t in part.logprobs)
    with c.responses.stream(**asked) as stream:
        streamed = [t for e in stream if e.type == "response.output_text.delta" for t in e.logprobs]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in part.logprobs]
    assert c.responses.create(**{**asked, "include": []}).output[0].content[0].logprobs == []


def test_a_tool_call_and_its_result_round_trip(localnet: dict) -> None:
    c = client(localnet)
    first = c.responses.create(model=MODEL, input="Weather in Paris", tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)["city"]
    second = c.responses.create(model=MODEL, tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text and second.output[0].type == "message"
    with c.responses.stream(model=MODEL, input="Weather in Paris", tools=[WEATHER]) as stream:
        streamed = stream.get_final_response().output
    assert [(o.type, o.name, o.arguments) for o in streamed] == [(call.type, call.name, call.arguments)]


def test_structured_output_parses_into_the_model(localnet: dict) -> None:
    class City(BaseModel):
        name: str
        population: int
        landmarks: list[str]

    parsed = client(localnet).responses.parse(model=MODEL, input="Tell me about Paris", text_format=City)
    assert isinstance(parsed.output_parsed, City)


def test_stored_responses_continue_and_are_deleted_as_the_sdk_expects(localnet: dict) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(localnet).responses.create(model=MODEL, input="again", previous_response_id="resp_123")
    assert e.value.param == "previous_response_id" and "'resp_123' not found" in e.value.message
    made = client(localnet).responses.create(model=MODEL, input="hi")
    more = client(localnet).responses.create(model=MODEL, input="again", previous_response_id=made.id)
    assert more.previous_response_id == made.id and client(localnet).responses.retrieve(made.id).id == made.id
    client(localnet).responses.delete(made.id)
    for call in (client(localnet).responses.retrieve, client(localnet).responses.delete):
        with pytest.raises(openai.NotFoundError) as e:
            call(made.id)
        assert e.value.code == "response_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=localnet["api_url"] + "/v1", api_key="sn1-wrong", max_retries=0).responses.retrieve(
            made.id)


def test_the_agents_sdks_default_model_runs_handoffs_and_tools(localnet: dict) -> None:
    """``OpenAIResponsesModel`` (the Agents SDK's default), streamed and not, with a handoff and a tool."""
    from agents import Agent, AsyncOpenAI, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    model = OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(
        base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"], max_retries=0))
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    spanish = Agent(name="Spanish agent", instructions="You only speak Spanish.", model=model)
    english = Agent(name="English agent", instructions="You only speak English.", model=model)
    triage = Agent(name="Triage agent", instructions="Handoff to the appropriate agent based on the language.",
                   handoffs=[spanish, english], model=model)
    weather = Agent(name="Weather agent", instructions="Use the tool.", tools=[get_weather], model=model)

    async def run() -> None:
        result = await Runner.run(triage, input="Hola, ¿Cómo te llamas?")
        assert result.last_agent.name == "Spanish agent" and result.final_output
        streamed = Runner.run_streamed(triage, input="Hello! Please answer in English.")
        async for _event in streamed.stream_events():
            pass
        assert streamed.last_agent.name == "English agent" and streamed.final_output
        result = await Runner.run(weather, input="Weather in Paris?")
        assert asked and result.final_output

    asyncio.run(run())


def test_web_search_is_served_by_the_retrieval_miners(localnet: dict) -> None:
    """OpenAI's ``web_search`` tool, answered from the local network's corpus (the deterministic miners'
    web), streamed and not; the Agents SDK's ``WebSearchTool`` over two turns (the second sends the first
    turn's search call back as input)."""
    c = client(localnet)
    r = c.responses.create(model=MODEL, input="Tell me about the city of Pelseldan",
                           tools=[{"type": "web_search"}], include=["web_search_call.action.sources"])
    search, message = r.output
    assert search.type == "web_search_call" and search.status == "completed" and message.type == "message"
    assert search.action.query == "Tell me about the city of Pelseldan"
    urls = [source.url for source in search.action.sources]
    assert urls and urls[0] == "https://corpus.sn1.local/wiki/pelseldan-city"
    assert r.output_text
    with c.responses.stream(model=MODEL, input="Tell me about Marcor city",
                            tools=[{"type": "web_search_preview", "search_context_size": "low"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.web_search_call.completed" in kinds and kinds[-1] == "response.completed"
    assert [o.type for o in final.output] == ["web_search_call", "message"]
    assert not hasattr(final.output[0].action, "sources") or not final.output[0].action.sources  # not asked

    from agents import Agent, AsyncOpenAI, OpenAIResponsesModel, Runner, WebSearchTool, set_tracing_disabled

    set_tracing_disabled(True)
    model = OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(
        base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"], max_retries=0))
    researcher = Agent(name="Researcher", instructions="Answer with sources.", tools=[WebSearchTool()], model=model)

    async def run() -> None:
        first = await Runner.run(researcher, "Tell me about the city of Pelseldan")
        assert [type(i).__name__ for i in first.new_items] == ["ToolCallItem", "MessageOutputItem"]
        second = await Runner.run(researcher, [*first.to_input_list(), {"role": "user", "content": "And Marcor?"}])
        assert second.final_output

    asyncio.run(run())


def test_curl_sees_openais_event_stream(localnet: dict) -> None:
    req = urllib.request.Request(localnet["api_url"] + "/v1/responses", method="POST",
                                 data=json.dumps({"input": "hi", "stream": True}).encode(),
                                 headers={"Authorization": f"Bearer {localnet['api_key']}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        frames = r.read().decode().strip().split("\n\n")
    names = [f.split("\n")[0] for f in frames]
    assert names[:2] == ["event: response.created", "event: response.in_progress"]
    assert names[-1] == "event: response.completed" and "data: [DONE]" not in frames


def test_langchain_on_the_responses_api(localnet: dict) -> None:
    """``ChatOpenAI(use_responses_api=True)``: invoke, stream, tools and structured output."""
    from langchain_openai import ChatOpenAI

    class GetWeather(BaseModel):
        """The weather in a city."""

        city: str

    class City(BaseModel):
        name: str
        population: int

    llm = ChatOpenAI(model=MODEL, base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"],
                     use_responses_api=True, max_retries=0, extra_body={"seed": 3})
    said = llm.invoke("Hello there")
    assert said.text and said.usage_metadata and said.usage_metadata["output_tokens"] > 0
    streamed = list(llm.stream("Hello there"))
    assert len(streamed) > 3 and "".join(c.text for c in streamed) == said.text
    (call,) = llm.bind_tools([GetWeather]).invoke("Weather in Paris").tool_calls
    assert call["name"] == "GetWeather" and call["args"]["city"]
    assert isinstance(llm.with_structured_output(City).invoke("Paris"), City)


def local_env(localnet: dict) -> dict[str, str]:
    """The local subnet API's settings (its env file), for another API process on the same network."""
    text = (Path(localnet["dir"]) / "api.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def continue_across(here: dict, there: dict) -> None:
    """Conversations whose turns alternate between two APIs (each turn a new connection): stored on one,
    continued, listed, read and deleted on the other; a background response too, and an item reference."""
    for i in range(6):
        first = client(here).responses.create(model=MODEL, input=f"Remember {i}.")
        second = client(there).responses.create(model=MODEL, input="And?", previous_response_id=first.id)
        third = client(here).responses.create(model=MODEL, input="Last.", previous_response_id=second.id)
        assert third.status == "completed" and client(there).responses.retrieve(third.id).id == third.id
        listed = client(there).responses.input_items.list(third.id, order="asc")
        assert [item.type for item in listed.data] == ["message"] * 5  # three questions, two answers
    client(there).responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client(here).responses.retrieve(first.id)
    # a background response made on one is polled, cancelled (done: as it is) and referenced on the other
    job = client(here).responses.create(model=MODEL, input="In the background.", background=True)
    for _ in range(200):
        job = client(there).responses.retrieve(job.id)
        if job.status not in ("queued", "in_progress"):
            break
        time.sleep(0.05)
    assert job.status == "completed" and job.output_text and client(there).responses.cancel(job.id).status == "completed"
    referenced = client(there).responses.create(model=MODEL, input=[{"type": "item_reference", "id": job.output[0].id},
                                                                      {"role": "user", "content": "Go on."}])
    assert referenced.status == "completed"
    # a background stream left after its first event on one is resumed on the other, to its final response
    with client(here).responses.stream(model=MODEL, input="Stream it.", background=True) as first_part:
        created = next(iter(first_part))
    with client(there).responses.stream(response_id=created.response.id, starting_after=0) as rest:
        final = rest.get_final_response()
    assert final.status == "completed" and final.output_text and final.id == created.response.id


def test_a_conversation_continues_on_another_api_process_and_worker(localnet: dict, tmp_path: Path) -> None:
    """The turns of one conversation reach whichever API process and worker a balancer picks (one SQLite
    file; a second API with WORKERS=2, whose kernel hands each new connection to either worker)."""
    env = local_env(localnet)
    other = start_api(tmp_path, env, store_url=env["STORE_URL"], workers=2, name="second-api")
    try:
        wait_ready([other], workers=2)
        continue_across(localnet, {**localnet, "api_url": other.url})
    finally:
        other.kill()


@pytest.mark.redis
def test_a_conversation_continues_across_api_hosts_on_redis(localnet: dict, tmp_path: Path) -> None:
    """A fleet: two APIs on one Redis (``STORE_URL=redis://``), as on two hosts."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip(NO_REDIS)
    env, namespace = local_env(localnet), f"test-conv-{secrets.token_hex(6)}"
    apis = [start_api(tmp_path, env, store_url=url, namespace=namespace, name=f"redis-api{i}") for i in range(2)]
    try:
        wait_ready(apis)
        made = urllib.request.Request(f"{apis[0].url}/api_management/create-api-key/?rate_limit=1000", method="POST",
                                      headers={"admin-key": env["ADMIN_KEY"]})
        with urllib.request.urlopen(made, timeout=10) as r:
            key = json.loads(r.read())["api_key"]
        continue_across(*({**localnet, "api_url": a.url, "api_key": key} for a in apis))
    finally:
        stop_on_redis(apis, url, namespace)
