"""Parallel tool calls through every client the README shows, against a real local subnet: the test model
calls each tool a message names by name (``tool_calls.py``), so an agent's two calls in one turn, streamed and
not, on Chat Completions and on Responses, are what these clients receive and run."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.compat.support import MODEL

ASK = 'Call get_weather and get_time for city "Oslo"'
STRICT = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": name, "description": what, "strict": True, "parameters": STRICT}}
         for name, what in (("get_weather", "Current weather in a city"), ("get_time", "Local time in a city"))]


def async_client(localnet: dict) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"], max_retries=0,
                              timeout=30)


def test_the_openai_sdk_gets_both_calls_streamed_or_not_and_answers_after_both_results(localnet: dict) -> None:
    """Sync and async, ``strict`` functions: two calls in one message, ``finish_reason: tool_calls``, the
    stream's two ``index``es reassembled by the SDK's stream helper, usage in the last chunk; the results of
    both sent back get the answer."""
    sync = openai.OpenAI(base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"], max_retries=0, timeout=30)
    messages: list = [{"role": "user", "content": ASK}]
    first = sync.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, parallel_tool_calls=True)
    calls = first.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]
    assert first.choices[0].finish_reason == "tool_calls" and first.usage.completion_tokens > 0

    async def streamed() -> tuple[list, object]:
        async with async_client(localnet).chat.completions.stream(
                model=MODEL, messages=messages, tools=TOOLS, stream_options={"include_usage": True}) as stream:
            done = [e.name async for e in stream if e.type == "tool_calls.function.arguments.done"]
            return done, await stream.get_final_completion()

    done, final = asyncio.run(streamed())
    assert done == ["get_weather", "get_time"] and final.usage.total_tokens > 0
    assert [(c.index, c.function.name, c.function.parsed_arguments) for c in final.choices[0].message.tool_calls] \
        == [(0, "get_weather", {"city": "Oslo"}), (1, "get_time", {"city": "Oslo"})]
    messages += [first.choices[0].message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "fine"} for c in reversed(calls)]
    answer = sync.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    one = sync.chat.completions.create(model=MODEL, messages=messages[:1], tools=TOOLS, parallel_tool_calls=False)
    assert len(one.choices[0].message.tool_calls) == 1


def test_langchain_streams_both_calls_and_runs_them(localnet: dict) -> None:
    """``bind_tools`` (strict), streamed: the chunks add up to both calls, with usage."""
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    @tool
    def get_time(city: str) -> str:
        """Local time in a city."""
        return "noon"

    llm = ChatOpenAI(model=MODEL, base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"],
                     max_retries=0, stream_usage=True).bind_tools([get_weather, get_time], strict=True)
    # (sync: LangChain keeps one async HTTP client a process, bound to the first event loop that used it)
    message = None
    for chunk in llm.stream(ASK):
        message = chunk if message is None else message + chunk
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]
    assert message.usage_metadata["total_tokens"] > 0


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_an_agents_sdk_agent_runs_both_tools_in_one_turn_and_still_hands_off(localnet: dict, api: str) -> None:
    """The Agents SDK, two function tools and a handoff, ``Runner.run`` and ``run_streamed``: both tools run
    in the first turn, then the model answers; a request for the other agent is handed off."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    client = async_client(localnet)
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client) if api == "chat_completions" else \
        OpenAIResponsesModel(model=MODEL, openai_client=client)
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        ran.append(f"weather {city}")
        return "sunny"

    @function_tool
    def get_time(city: str) -> str:
        """Local time in a city."""
        ran.append(f"time {city}")
        return "noon"

    settings = ModelSettings(include_usage=True)
    billing = Agent(name="Billing agent", handoff_description="refunds and invoices", instructions="Billing.",
                    model=model, model_settings=settings)
    triage = Agent(name="Triage agent", instructions="Use the tools or hand off.", tools=[get_weather, get_time],
                   handoffs=[billing], model=model, model_settings=settings)

    async def run() -> None:
        result = await Runner.run(triage, input=ASK, max_turns=4)
        kinds = [item.type for item in result.new_items]
        assert kinds == ["tool_call_item", "tool_call_item", "tool_call_output_item", "tool_call_output_item",
                         "message_output_item"] and sorted(ran) == ["time Oslo", "weather Oslo"]
        assert result.final_output and result.context_wrapper.usage.requests == 2
        streamed = Runner.run_streamed(triage, input=ASK, max_turns=4)
        events = [e async for e in streamed.stream_events() if e.type == "run_item_stream_event"]
        assert [e.name for e in events].count("tool_output") == 2 and len(ran) == 4
        assert streamed.final_output and streamed.context_wrapper.usage.total_tokens > 0
        handed = await Runner.run(triage, input="Transfer to the billing agent about a refund", max_turns=4)
        assert handed.last_agent.name == "Billing agent" and handed.final_output

    asyncio.run(run())


def test_a_pydantic_ai_agent_runs_both_tools_then_answers(localnet: dict) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"])
    agent = Agent(OpenAIChatModel(MODEL, provider=provider))
    ran: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        ran.append("weather")
        return "sunny"

    @agent.tool_plain
    def get_time(city: str) -> str:
        """Local time in a city."""
        ran.append("time")
        return "noon"

    result = asyncio.run(agent.run(ASK))
    assert sorted(ran) == ["time", "weather"] and result.output
    assert result.usage.requests == 2 and result.usage.tool_calls == 2
