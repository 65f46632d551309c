"""Which tool calls count as answers: the request's tools, narrowed by its ``tool_choice``."""

from __future__ import annotations

from api.answer_checks import offered_tools

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
