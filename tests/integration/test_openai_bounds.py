"""Requests OpenAI refuses are refused here too, in OpenAI's words, ``code`` and ``param`` (through the real API app,
the official SDK where its exception is what a caller reads): code moved from api.openai.com meets the same 400."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.helpers import Script, api_with_miners, call, chunk, openai_client, post, sse

MESSAGES = [{"role": "user", "content": "What is a subnet?"}]


def answer() -> Script:
    return Script([(0, d) for d in sse(chunk("An answer."), chunk(finish="stop"))])


async def test_max_output_tokens_below_16_is_openais_400_and_16_is_served(tmp_path: Path) -> None:
    """OpenAI's least ``max_output_tokens`` is 16: a smaller one (a probe's ``max_output_tokens=1``) was served
    here, cut at it, where OpenAI answers ``400 integer_below_min_value``."""
    scripts = {1: answer()}
    async with api_with_miners(tmp_path, scripts) as api:
        client = openai_client(api)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="default", input="Say OK", max_output_tokens=15)
        assert scripts[1].calls == 0, "refused before any miner was asked"
        made = await client.responses.create(model="default", input="Say OK", max_output_tokens=16)
    assert refused.value.code == "integer_below_min_value" and refused.value.param == "max_output_tokens"
    assert refused.value.body["message"] == ("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                                     "but got 15 instead.")
    assert made.status == "completed" and made.max_output_tokens == 16
    assert scripts[1].bodies[-1]["max_tokens"] == 16


@pytest.mark.parametrize("item", [
    {"role": "user", "content": []},
    {"type": "message", "role": "developer", "content": []},
], ids=["user", "typed developer"])
async def test_an_input_message_with_empty_content_is_openais_400(tmp_path: Path, item: dict) -> None:
    """A message of ``input`` with ``content: []`` went to the miners as a turn with nothing in it, and the
    model answered nothing in particular (a 200): OpenAI refuses it (``empty_array``), naming the content."""
    scripts = {1: answer()}
    async with api_with_miners(tmp_path, scripts) as api:
        with pytest.raises(openai.BadRequestError) as refused:
            await openai_client(api).responses.create(model="default", input=[
                {"role": "user", "content": "Hello"}, item])
    assert refused.value.code == "empty_array" and refused.value.param == "input.1.content"
    assert refused.value.body["message"].startswith("Invalid 'input.1.content': empty array. Expected an array with minimum "
                                            "length 1")
    assert scripts[1].calls == 0


@pytest.mark.parametrize(("path", "body", "param", "code", "words"), [
    ("/v1/chat/completions", {"messages": MESSAGES, "temperature": 2.5}, "temperature", "decimal_above_max_value",
     "decimal above maximum value. Expected a value <= 2, but got 2.5 instead."),
    ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0}, "max_tokens", "integer_below_min_value",
     "integer below minimum value. Expected a value >= 1, but got 0 instead."),
    ("/v1/chat/completions", {"messages": []}, "messages", "empty_array",
     "empty array. Expected an array with minimum length 1, but got an empty array instead."),
    ("/v1/chat/completions", {"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop",
     "array_above_max_length", "array too long. Expected an array with maximum length 4, but got an array with "
                               "length 5 instead."),
    ("/v1/chat/completions", {"messages": MESSAGES, "metadata": {str(n): "v" for n in range(17)}}, "metadata",
     "object_above_max_properties", "too many properties. Expected an object with at most 16 properties, but got "
                                    "an object with 17 properties instead."),
    ("/v1/completions", {"prompt": "hi", "logprobs": 6}, "logprobs", "integer_above_max_value",
     "integer above maximum value. Expected a value <= 5, but got 6 instead."),
    ("/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length",
     "array too long. Expected an array with maximum length 4, but got an array with length 5 instead."),
    ("/v1/responses", {"input": "hi", "top_p": 1.5}, "top_p", "decimal_above_max_value",
     "decimal above maximum value. Expected a value <= 1, but got 1.5 instead."),
    ("/v1/responses", {"input": "hi", "top_logprobs": 21}, "top_logprobs", "integer_above_max_value",
     "integer above maximum value. Expected a value <= 20, but got 21 instead."),
    ("/v1/responses", {"input": "hi", "metadata": {"k": "x" * 600}}, "metadata.k", "string_above_max_length",
     "string too long. Expected a string with maximum length 512, but got a string with length 600 instead."),
], ids=["temperature", "max_tokens", "no messages", "chat stop", "metadata", "logprobs", "completions stop", "top_p",
        "top_logprobs", "metadata value"])
async def test_a_value_past_its_bound_is_openais_400_with_its_code(tmp_path: Path, path: str, body: dict, param: str,
                                                                   code: str, words: str) -> None:
    """Every such refusal was ``invalid_value`` with pydantic's words ("Input should be less than or equal to
    2"); clients that sort OpenAI's refusals by code (an output limit too high, an array too long) found none of
    OpenAI's. The legacy completions' five stops were even ``unsupported_parameter``."""
    async with api_with_miners(tmp_path, {1: answer()}) as api:
        status, _, text = await post(api, {"model": "default", **body}, path=path)
    err = json.loads(text)["error"]
    assert status == 400, text
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error"), err
    assert err["message"] == f"Invalid '{param}': {words}"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
     "text.format.name"),
    ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "answer"}}},
     "text.format.schema"),
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {"type": "json_schema"}},
     "response_format.json_schema"),
    ("/v1/chat/completions", {"messages": MESSAGES, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}, "response_format.json_schema.name"),
], ids=["format name", "format schema", "json_schema", "json_schema name"])
async def test_a_json_schema_format_missing_a_field_names_that_field(tmp_path: Path, path: str, body: dict,
                                                                     param: str) -> None:
    """The 400 named only ``text.format`` (or ``response_format``), as ``invalid_value``: OpenAI's names the field
    left out, as ``missing_required_parameter``, and a caller's check of ``param`` found another place."""
    async with api_with_miners(tmp_path, {1: answer()}) as api:
        status, _, text = await post(api, {"model": "default", **body}, path=path)
    err = json.loads(text)["error"]
    assert status == 400, text
    assert (err["code"], err["param"]) == ("missing_required_parameter", param), err
    assert err["message"] == f"Missing required parameter: '{param}'."


async def test_a_list_limit_past_its_bound_in_the_query_string_is_openais_400(tmp_path: Path) -> None:
    """A query parameter is read from text: its bound's refusal is OpenAI's too, the number as it was sent."""
    async with api_with_miners(tmp_path, {1: answer()}) as api:
        made = await openai_client(api).responses.create(model="default", input="hi")
        status, body = await call(api, "GET", f"/v1/responses/{made.id}/input_items?limit=101")
    assert status == 400 and body["error"] == {
        "message": "Invalid 'limit': integer above maximum value. Expected a value <= 100, but got 101 instead.",
        "type": "invalid_request_error", "code": "integer_above_max_value", "param": "limit"}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages.0.content.0.text"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.0.content.0.image_url"),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input.0.content.0.text"),
    ("/v1/responses", {"input": "hi", "tools": [{"type": "function"}]}, "tools.0.name"),
], ids=["message content", "text part", "image part", "input_text", "function tool name"])
async def test_a_required_field_left_out_is_openais_missing_required_parameter(tmp_path: Path, path: str, body: dict,
                                                                               param: str) -> None:
    """These were ``invalid_value`` (the place named, the code not OpenAI's): a field left out is OpenAI's
    ``missing_required_parameter``, as every other field left out already was here."""
    async with api_with_miners(tmp_path, {1: answer()}) as api:
        status, _, text = await post(api, {"model": "default", **body}, path=path)
    err = json.loads(text)["error"]
    assert status == 400, text
    assert (err["code"], err["param"]) == ("missing_required_parameter", param), err
    assert err["message"].startswith(f"Missing required parameter: '{param}'")


async def test_a_required_field_sent_as_null_is_still_an_invalid_value(tmp_path: Path) -> None:
    """Sent, as ``null``, the field is there with a value that will not do: not "missing"."""
    async with api_with_miners(tmp_path, {1: answer()}) as api:
        status, _, text = await post(api, {"model": "default", "messages": [{"role": "user", "content": None}]})
    err = json.loads(text)["error"]
    assert status == 400 and (err["code"], err["param"]) == ("invalid_value", "messages.0.content"), err
