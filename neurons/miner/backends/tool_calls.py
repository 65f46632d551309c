"""The deterministic test model's tool calling: simple, documented, and a pure function of the request.

Agent frameworks (the OpenAI Agents SDK, LangChain) drive a model through tool
calls, so the test model must make them for an agent test to be real. The rule:

- no ``tools``, or ``tool_choice: "none"`` -> no tool call (plain text answer);
- ``tool_choice: {"type": "function", "function": {"name": X}}`` -> call ``X``;
- otherwise, if the last message is a ``tool`` result -> no tool call: the
  model answers in text (so an agent loop ends), unless ``tool_choice`` is
  ``"required"``, which obliges a call (as OpenAI's and vLLM's models make one):
  then it calls a tool not yet called since the last user message when there is
  one (an agent whose answer is a tool, Pydantic AI's ``final_result``, gets it
  after its other tool's result, not that tool again until its request limit);
- otherwise, if the last user message names two or more tools by their whole
  names (``get_weather and get_time``) and ``parallel_tool_calls`` is not false ->
  a call of each, in the order it names them (parallel calls);
- otherwise -> call the tool that shares the most distinct words with the last
  user message (its name split on ``_``/``-`` and camelCase, plus its description;
  common function words such as "the", "a", "for" do not count; the first tool
  listed on a tie).

Arguments are the values the last user message states by name (``city "Oslo"``,
``days: 3``: the rule is in ``stated_arguments.py``). A message that states none
gets the older rule, a value of the tool's JSON-schema ``parameters`` built from
the last user message (``schema_instance.py``): a string gets the message (an
``enum`` its first value), an integer or number the message's word count, a
boolean ``true``, a nested object every property, an array one item.
The call id is derived from the request, so the same request gives the same call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from neurons.miner.backends.schema_instance import instance
from neurons.miner.backends.stated_arguments import name_words, stated_arguments
from shared.jsonutil import dumps
from shared.protocol import chunk_object, completion_object, content_text, new_completion_id, usage_chunk

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Words nearly every request and description share: counted, a long description full of them could
# outvote the tool a message names by its own words (the test ``..._function_words_do_not`` shows one).
FUNCTION_WORDS = frozenset(
    "a an the to of for in on at by with from into and or is are be me my i you your it its this that "
    "please can could would will what which".split())


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - FUNCTION_WORDS


def _tool_words(fn: dict[str, Any]) -> set[str]:
    """The words a message may share with a function: its name's and its description's."""
    description = fn.get("description") if isinstance(fn.get("description"), str) else ""
    return (set(name_words(fn["name"])) | _words(description)) - FUNCTION_WORDS


def relevance(fn: dict[str, Any], text: str) -> int:
    """How many distinct words of ``text`` the function shares (the rule picks the highest)."""
    return len(_words(text) & _tool_words(fn))


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's callable functions (malformed tool entries are ignored, not fatal)."""
    out = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            out.append(fn)
    return out


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def _called_since_user(messages: list[Any]) -> set[str]:
    """The names of the functions the assistant called since the last user message (this turn's calls)."""
    called: set[str] = set()
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") == "user":
            break
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        for call in calls if isinstance(calls, list) else []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                called.add(fn["name"])
    return called


def _not_yet_called(functions: list[dict[str, Any]], messages: list[Any]) -> list[dict[str, Any]]:
    """The functions this turn has not called, or all of them when it has called each (a required call
    after a tool result moves on, as a model does, rather than repeat the call it has the result of)."""
    called = _called_since_user(messages)
    return [f for f in functions if f["name"] not in called] or functions


def _choose(functions: list[dict[str, Any]], text: str) -> dict[str, Any]:
    best = max(range(len(functions)), key=lambda i: (relevance(functions[i], text), -i))
    return functions[best]


def arguments_for(parameters: Any, text: str) -> dict[str, Any]:
    """The call's arguments: the values ``text`` states, else a value of its ``parameters`` schema built
    from ``text``."""
    stated = stated_arguments(parameters, text)
    if stated is not None:
        return stated
    value = instance(parameters, text)
    return value if isinstance(value, dict) else {}


def _named_in(functions: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The functions ``text`` names by their whole name (``get_weather``), in the order it first names them."""
    found = []
    for fn in functions:
        at = re.search(rf"(?<![\w-]){re.escape(fn['name'])}(?![\w-])", text, re.IGNORECASE)
        if at:
            found.append((at.start(), fn))
    return [fn for _, fn in sorted(found, key=lambda pair: pair[0])]


def _call(fn: dict[str, Any], text: str, seed: Any) -> dict[str, Any]:
    arguments = json.dumps(arguments_for(fn.get("parameters"), text), ensure_ascii=False)
    digest = hashlib.sha256(json.dumps([fn["name"], arguments, seed]).encode()).hexdigest()
    return {"id": f"call_{digest[:24]}", "type": "function", "function": {"name": fn["name"], "arguments": arguments}}


def planned_tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls the model makes for this request (several when the message names several tools and
    ``parallel_tool_calls`` is not false), or none when it answers in text."""
    functions = _functions(body)
    choice = body.get("tool_choice")
    if not functions or choice == "none":
        return []
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    answered = messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
    if named is None and choice != "required" and answered:
        return []
    text = _last_user_text(messages)
    if answered and named is None:
        functions = _not_yet_called(functions, messages)
    parallel = [] if named or answered or body.get("parallel_tool_calls") is False else _named_in(functions, text)
    if len(parallel) > 1:
        return [_call(fn, text, body.get("seed")) for fn in parallel]
    fn = next((f for f in functions if f["name"] == named), None) if named else _choose(functions, text)
    return [] if fn is None else [_call(fn, text, body.get("seed"))]


def planned_tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The model's first tool call for this request, or None when it answers in text."""
    calls = planned_tool_calls(body)
    return calls[0] if calls else None


def tool_call_completion(calls: list[dict[str, Any]], *, model: str, usage: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` whose message is the calls (``content: null``, ``finish_reason: tool_calls``)."""
    return completion_object(completion_id=new_completion_id(), model=model, content=None, tool_calls=calls,
                             finish_reason="tool_calls", usage=usage)


def tool_call_stream(calls: list[dict[str, Any]], *, model: str, usage: dict[str, Any] | None) -> Iterator[str]:
    """The calls' chunks as JSON text, one call after the other (then a usage chunk when ``usage`` is given)."""
    cid = new_completion_id()
    for index, call in enumerate(calls):
        for delta in tool_call_deltas(call, index=index):
            role = {"role": "assistant", "content": None} if index == 0 and "id" in delta else {}
            yield dumps(chunk_object(completion_id=cid, model=model, delta={**role, "tool_calls": [delta]}))
    yield dumps(chunk_object(completion_id=cid, model=model, delta={}, finish_reason="tool_calls"))
    if usage is not None:
        yield dumps(usage_chunk(completion_id=cid, model=model, usage=usage))


def tool_call_deltas(call: dict[str, Any], *, index: int) -> Iterator[dict[str, Any]]:
    """The call as OpenAI streams it: id and name first, then the arguments in two pieces."""
    arguments = call["function"]["arguments"]
    half = len(arguments) // 2
    yield {"index": index, "id": call["id"], "type": "function",
           "function": {"name": call["function"]["name"], "arguments": ""}}
    for piece in (arguments[:half], arguments[half:]):
        if piece:
            yield {"index": index, "function": {"arguments": piece}}
