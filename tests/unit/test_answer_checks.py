"""What counts as an answer: the tools a request offers (narrowed by tool_choice), the JSON it asks for."""

from __future__ import annotations

from api.answer_checks import json_opening, offered_tools

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
