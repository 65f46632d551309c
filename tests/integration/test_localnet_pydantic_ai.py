"""Pydantic AI's ``Agent`` on ``OpenAIChatModel`` against a real local subnet: a plain run, a run whose
tool the model calls, structured ``output_type`` (tool, native and prompted output) and ``run_stream``."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

pytest.importorskip("pydantic_ai", reason="pydantic-ai-slim[openai] is not installed: `make install` installs it")
from pydantic_ai import Agent, NativeOutput, PromptedOutput, ToolOutput  # noqa: E402
from pydantic_ai.messages import TextPart, ToolCallPart, ToolReturnPart  # noqa: E402
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402
from pydantic_ai.usage import UsageLimits  # noqa: E402

MODEL = "sn1/deterministic"
SEEDED = {"extra_body": {"seed": 11}}

pytestmark = pytest.mark.usefixtures("loopback_only")


class City(BaseModel):
    name: str
    population: int


def chat_model(localnet: dict) -> OpenAIChatModel:
    """What the README shows: the Chat Completions model with an OpenAIProvider pointed at the gateway."""
    provider = OpenAIProvider(base_url=localnet["api_url"] + "/v1", api_key=localnet["api_key"])
    return OpenAIChatModel(MODEL, provider=provider)


def agent(localnet: dict, **kw: object) -> Agent:
    """An agent as the README makes it: no instrumentation is on unless asked (``Agent.instrument_all``),
    and logfire is not installed; ``loopback_only`` holds any connection beyond 127.0.0.1 to that."""
    return Agent(chat_model(localnet), **kw)


async def test_a_plain_run_reads_the_answer_usage_and_finish_reason(localnet: dict) -> None:
    result = await agent(localnet, instructions="Be brief.").run("What is a subnet?", model_settings=SEEDED)
    response = result.response
    assert result.output and response.finish_reason == "stop" and response.model_name == MODEL
    assert response.provider_response_id.startswith("chatcmpl-")
    assert result.usage.requests == 1 and result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    cut = await agent(localnet).run("What is a subnet?", model_settings={"max_tokens": 3})
    assert len(cut.output.split()) == 3 and cut.response.finish_reason == "length"


async def test_the_model_calls_the_agents_tool_and_answers_with_its_result(localnet: dict) -> None:
    weather = agent(localnet, instructions="Use the tool.")
    asked: list[str] = []

    @weather.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    result = await weather.run("Weather in Paris?")
    parts = [type(p) for m in result.all_messages() for p in m.parts]
    assert asked == ["Weather in Paris?"] and result.output
    assert parts[-3:] == [ToolCallPart, ToolReturnPart, TextPart]
    assert result.usage.requests == 2 and result.usage.tool_calls == 1
    async with weather.run_stream("Weather in Rome?") as streamed:
        assert await streamed.get_output()
    assert asked[-1] == "Weather in Rome?"


@pytest.mark.parametrize("wrap", [ToolOutput, NativeOutput, PromptedOutput], ids=["tool", "native", "prompted"])
async def test_a_structured_output_type_comes_back_validated(localnet: dict, wrap: type) -> None:
    """Each way Pydantic AI asks for structure: an output tool, ``response_format`` json_schema, and
    json_object with the schema in its instructions; streamed too, as growing partial objects."""
    structured = agent(localnet, output_type=wrap(City))
    result = await structured.run("Paris")
    assert result.output == City(name="Paris", population=1) and result.usage.output_tokens > 0
    async with structured.run_stream("Paris") as streamed:
        partials = [p async for p in streamed.stream_output(debounce_by=None)]
    assert partials[-1] == result.output and streamed.usage.requests == 1


@pytest.mark.parametrize("wrap", [lambda t: t, ToolOutput], ids=["default", "tool"])
async def test_an_agent_with_a_tool_and_an_output_tool_calls_one_then_the_other(localnet: dict, wrap) -> None:
    """The commonest agent: a tool and a structured answer, which Pydantic AI asks for as a tool of its own
    (``final_result``, with ``tool_choice: "required"``). The test model called the agent's tool again after
    its result, every turn, and the run ended in ``UsageLimitExceeded`` after 50 requests."""
    trip = agent(localnet, output_type=wrap(City))
    asked: list[str] = []

    @trip.tool_plain
    def forecast(city: str) -> str:
        """The forecast for a city."""
        asked.append(city)
        return "sunny"

    result = await trip.run("Forecast for Paris", usage_limits=UsageLimits(request_limit=4))
    assert isinstance(result.output, City) and asked == ["Forecast for Paris"]
    assert result.usage.requests == 2 and result.usage.tool_calls == 1
    async with trip.run_stream("Forecast for Rome", usage_limits=UsageLimits(request_limit=4)) as streamed:
        assert isinstance(await streamed.get_output(), City)
    assert asked[-1] == "Forecast for Rome"


async def test_run_stream_yields_the_text_as_it_comes_with_usage(localnet: dict) -> None:
    """Streamed text is the same answer as the run's (same seed), in many deltas, and the usage from the
    stream's last chunk reaches ``usage``."""
    plain = agent(localnet)
    whole = (await plain.run("Tell me a story.", model_settings=SEEDED)).output
    async with plain.run_stream("Tell me a story.", model_settings=SEEDED) as streamed:
        deltas = [d async for d in streamed.stream_text(delta=True, debounce_by=None)]
    assert len(deltas) > 3 and "".join(deltas) == whole
    assert streamed.usage.output_tokens == len(whole.split()) and streamed.usage.input_tokens > 0
