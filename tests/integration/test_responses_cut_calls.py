"""A ``tool_choice`` that requires a call, and an answer the caller's own ``max_output_tokens`` cut before any call
was made (a model server constrained to calls streams nothing until a call's name is whole): through the real API
and a miner, the response is ``incomplete`` (``max_output_tokens``), as at OpenAI, streamed or not; prose claiming
the cut is still no answer to a required call (the chat path's rule for a cut answer, ``caller_limited``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Script, chunk, post, sse
from tests.integration.test_responses_chain import api_on
from tests.integration.test_responses_tool_outputs import TOOLS

REQUIRED = ["required", {"type": "function", "name": "get_weather"}]


def cut(*before: str) -> Script:
    """A miner whose answer ends ``length`` after ``before`` (no call)."""
    return Script([(0, d) for d in sse(*before, chunk(finish="length"))])


def final_of(text: str, stream: bool) -> dict[str, Any]:
    """The response object: the body, or a stream's last event's."""
    if not stream:
        return json.loads(text)
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    return json.loads(last[6:])["response"]


@pytest.mark.parametrize("choice", REQUIRED)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_required_call_cut_before_it_began_is_incomplete(tmp_path: Path, choice: Any, stream: bool) -> None:
    async with api_on("sqlite", tmp_path, cut()) as api:
        status, _, text = await post(api, {"model": "default", "input": "Weather?", "tools": TOOLS,
                                           "tool_choice": choice, "max_output_tokens": 16, "stream": stream},
                                     path="/v1/responses")
    assert status == 200, text
    final = final_of(text, stream)
    assert (final["status"], final["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"}), final
    assert not [item for item in final["output"] if item["type"] == "function_call"]


async def test_prose_claiming_the_cut_is_no_answer_to_a_required_call(tmp_path: Path) -> None:
    async with api_on("sqlite", tmp_path, cut(chunk("Sure, the weather"))) as api:
        status, _, text = await post(api, {"model": "default", "input": "Weather?", "tools": TOOLS,
                                           "tool_choice": "required", "max_output_tokens": 16}, path="/v1/responses")
    assert status == 502 and json.loads(text)["error"]["code"] == "no_valid_answer", text
