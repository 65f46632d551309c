"""What counts as an answer: the tools a request offers (narrowed by tool_choice), the JSON it asks for."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from api.answer_checks import answer_check, json_opening, offered_tools
from api.race import MinerRun
from shared.metagraph import Neuron

TOOLS = [{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}]


def test_the_tools_a_model_may_call() -> None:
    assert offered_tools({}) == frozenset()
    assert offered_tools({"tools": []}) == frozenset()
    assert offered_tools({"tools": TOOLS}) == {"a", "b"}
    assert offered_tools({"tools": TOOLS, "tool_choice": "auto"}) == {"a", "b"}
    assert offered_tools({"tools": TOOLS, "tool_choice": "required"}) == {"a", "b"}
    assert offered_tools({"tools": TOOLS, "tool_choice": "none"}) == frozenset()
    assert offered_tools({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "b"}}}) == {"b"}
    assert offered_tools({"tools": "garbage"}) == frozenset()


def test_what_a_json_mode_answer_opens_with() -> None:
    def schema(root: object) -> dict:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": root}}}

    assert json_opening({}) is None
    assert json_opening({"response_format": {"type": "text"}}) is None
    assert json_opening({"response_format": {"type": "json_object"}}) == "{"
    assert json_opening(schema({"type": "object"})) == "{"
    assert json_opening(schema({"type": "array", "items": {"type": "string"}})) == "["
    assert json_opening(schema({"type": "string"})) is None  # a bare value may open with anything
    assert json_opening(schema({"anyOf": [{"type": "object"}, {"type": "array"}]})) is None
    assert json_opening(schema("garbage")) is None


def test_a_request_with_strict_schemas_costs_no_metaschema_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking a schema against the metaschema took ~20 ms of the event loop: an agent's ten strict tools (the
    Agents SDK makes every tool strict) cost ten of them on every turn, before any miner was asked. A call's
    arguments are checked against its own function's parameters only, and a schema the validator cannot read
    leaves the answer unchecked, as before."""
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("check_schema called")

    monkeypatch.setattr(Draft202012Validator, "check_schema", refuse)
    city = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tools = [{"type": "function", "function": {"name": f"t{i}", "strict": True, "parameters": city}} for i in range(10)]
    tools.append({"type": "function", "function": {"name": "odd", "strict": True, "parameters": {"type": 5}}})
    body = {"tools": tools, "response_format": {"type": "json_schema", "json_schema": {
        "name": "c", "strict": True, "schema": city}}}
    check = answer_check(body)
    assert check is not None

    def calling(name: str, arguments: str) -> MinerRun:
        run = MinerRun(Neuron(uid=1, hotkey=""))
        run.tool_calls = {0: {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}}
        return run

    assert check(calling("t3", '{"city": "Paris"}')) is None
    assert "do not fit" in (check(calling("t3", '{"town": "Paris"}')) or "")
    assert check(calling("odd", '{"anything": 1}')) is None  # unreadable: left to the model server
    text = MinerRun(Neuron(uid=1, hotkey=""), content=['{"town": "Paris"}'])
    assert "strict JSON schema" in (check(text) or "")


def test_a_strict_schemas_patterns_are_still_checked_within_their_bound() -> None:
    def check(schema: dict, text: str) -> str | None:
        body = {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "x", "strict": True, "schema": schema}}}
        checked = answer_check(body)
        assert checked is not None
        return checked(MinerRun(Neuron(uid=1, hotkey=""), content=[text]))

    digits = {"type": "object", "properties": {"n": {"type": "string", "pattern": "^[0-9]+$"}}}
    assert check(digits, '{"n": "123"}') is None
    assert "does not match" in (check(digits, '{"n": "abc"}') or "")
    keyed = {"type": "object", "patternProperties": {"^x": {"type": "integer"}}}
    assert check(keyed, '{"x1": 1, "y": "any"}') is None
    assert "is not of type 'integer'" in (check(keyed, '{"x1": "one"}') or "")
    # a pattern the bound cuts short leaves the answer unchecked, as a schema the check cannot walk
    assert check({"type": "object", "properties": {"s": {"pattern": "^(a|aa)+$"}}}, '{"s": "' + "a" * 80 + '!"}') is None
    # a reference within the schema is still followed; one to a URL is not (never fetched: the answer is unchecked)
    defined = {"type": "object", "properties": {"s": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}}
    assert "is not of type 'integer'" in (check(defined, '{"s": "x"}') or "")
    assert check({"type": "object", "properties": {"s": {"$ref": "http://127.0.0.1:9/n"}}}, '{"s": "x"}') is None
