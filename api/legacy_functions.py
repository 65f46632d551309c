"""OpenAI's deprecated function calling on chat completions (``functions``, ``function_call``), served as tools.

OpenAI still serves the legacy fields, and older code sends them: LangChain's ``bind_functions`` and
``create_openai_fn_runnable``, older agent frameworks, many tutorials. Model servers take ``tools`` alone, so a
legacy request is made the tools request it means before anything reads it (the miners are asked it, its answers
are checked against it, the validator scores it), and its answer is put back in the legacy shape:
``message.function_call`` and ``finish_reason: "function_call"`` (``"stop"`` for a call the caller forced, as OpenAI
ends one), streamed as ``delta.function_call`` pieces.

A legacy answer holds one call (OpenAI's models made one per answer before parallel tool calls came with
``tools``): the miners are asked with ``parallel_tool_calls: false``, so one that makes several is no answer
(``answer_checks.tool_check``), and the first call alone is shown should one get through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from api.tool_finish import tools_finish
from shared.errors import ApiError
from shared.jsonutil import dumps, loads
from shared.miner_client import Event
from shared.protocol import FUNCTION_NAME

LEGACY = ("functions", "function_call")
# What a legacy request cannot also hold (OpenAI: "'functions' and 'tools' cannot both be provided").
MODERN = ("tools", "tool_choice")
NEUTRAL_CHOICES = ("none", "auto")
_NAME = re.compile(FUNCTION_NAME)  # a function's name, as ``FunctionDefinition`` checks a tool's
CALLS = "function_call"  # the legacy answer's finish reason and message field


@dataclass(frozen=True)
class Legacy:
    """A legacy function calling request, whose answer is put back in the legacy shape. ``forced``: its
    ``function_call`` named the function (``{"name": X}``), and OpenAI ends such an answer ``stop``, not
    ``function_call`` (as it ends a named ``tool_choice``'s ``stop``, not ``tool_calls``; vLLM too)."""

    forced: bool = False


def legacy_finish(reason: Any, *, called: bool, forced: bool) -> Any:
    """OpenAI's ``finish_reason`` for a legacy answer that ended on its own (``tool_finish.ENDED``): ``function_call`` when it
    holds a call the model chose to make, ``stop`` when the caller forced it or there is none; any other
    (``length``: a call the caller's token limit cut) as it came. The miner's own was kept: a forced call ended
    ``function_call`` or ``tool_calls``' ``function_call``, and a model server that ends its calls ``stop`` (vLLM
    for a named choice, some for any) left a chosen call without the ``function_call`` that code checks for."""
    return tools_finish(reason, called=called, forced=forced, calls=CALLS)


def _asks(sent: dict[str, Any], name: str) -> bool:
    """Whether ``sent`` sets ``name`` to something that asks for tools (not null, not an empty list)."""
    value = sent.get(name)
    return value is not None and value != []


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _checked_functions(functions: Any) -> list[dict[str, Any]]:
    """The request's ``functions``, each an object with a name as OpenAI allows one; else a 400 naming it (as
    ``tools``, a bad entry's 400 named ``tools.0.function.name``, a field the caller never sent)."""
    if not isinstance(functions, list):
        raise _bad("Invalid type for 'functions': expected an array of function definitions.", "functions")
    for i, fn in enumerate(functions):
        if not isinstance(fn, dict):
            raise _bad(f"Invalid type for 'functions[{i}]': expected an object.", f"functions.{i}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(f"Invalid 'functions[{i}].name': a function name is 1 to 64 letters, digits, underscores "
                       "or dashes.", f"functions.{i}.name")
    return functions


def _tool_choice(choice: Any, names: set[str]) -> Any:
    """``function_call`` as a ``tool_choice``: "none" and "auto" as they are, ``{"name": X}`` as the choice of X."""
    if choice in NEUTRAL_CHOICES:
        return choice
    name = choice.get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise _bad("Invalid value for 'function_call': expected 'none', 'auto' or {\"name\": ...} naming one of "
                   "'functions'.", "function_call")
    if name not in names:
        raise _bad(f"Invalid value for 'function_call': '{name[:64]}' is not among 'functions'.", "function_call")
    return {"type": "function", "function": {"name": name}}


def as_tools(sent: dict[str, Any]) -> tuple[dict[str, Any], Legacy | None]:
    """``sent`` with its legacy fields and messages in tools' terms (``messages_as_tools``), and, when its answer
    is to be in the legacy shape (it offers ``functions``), how (``Legacy``). ``function_call`` "none" or "auto"
    without functions asks for nothing and is dropped, as ``functions: []`` is; one naming a function needs the
    functions (OpenAI's 400, in its words, ``param`` ``function_call``); ``functions`` beside ``tools`` or
    ``tool_choice`` is OpenAI's 400 too, whose ``param`` is null (it names two fields: it was ``functions``)."""
    legacy = [name for name in LEGACY if _asks(sent, name)]
    if not legacy and not any(isinstance(m, dict) and m.get("role") == "function" for m in _messages(sent)):
        return sent, None
    modern = [name for name in MODERN if _asks(sent, name)]
    if "functions" in legacy and modern:
        raise _bad(f"Invalid request: 'functions' and '{modern[0]}' cannot both be provided. 'functions' is "
                   "deprecated; use the 'tools' parameter instead.", None, "invalid_request")
    out = {k: v for k, v in sent.items() if k not in LEGACY}
    if isinstance(sent.get("messages"), list):  # else its own 400 (missing, not a list) names it as sent
        out["messages"] = messages_as_tools(sent["messages"])
    if not _asks(sent, "functions"):
        if sent.get("function_call") not in (None, *NEUTRAL_CHOICES):
            instead = " 'function_call' is deprecated; use the 'tool_choice' parameter instead." if modern else ""
            raise _bad("Invalid value for 'function_call': 'function_call' is only allowed when 'functions' are "
                       f"specified.{instead}", "function_call")
        return out, None
    functions = _checked_functions(sent["functions"])
    out["tools"] = [{"type": "function", "function": fn} for fn in functions]
    choice = sent.get("function_call")
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice, {fn["name"] for fn in functions})
    out["parallel_tool_calls"] = False  # one call an answer, as the legacy shape holds
    return out, Legacy(forced=isinstance(out.get("tool_choice"), dict))


def _messages(sent: dict[str, Any]) -> list[Any]:
    messages = sent.get("messages")
    return messages if isinstance(messages, list) else []


def legacy_call_id(index: int) -> str:
    """The id given to the call of the legacy assistant message at ``index`` (the legacy shape has none)."""
    return f"call_legacy_{index}"


def messages_as_tools(messages: list[Any]) -> list[Any]:
    """A conversation's legacy turns as tool turns: an assistant message's ``function_call`` followed by a
    ``function`` message (its result) becomes a ``tool_calls`` entry with a made-up id and a ``tool`` message
    answering that id. A legacy turn without its other half is left as it came (the model server reads it or
    not, as before)."""
    out = list(messages)
    for i in range(len(out) - 1):
        call, result = out[i], out[i + 1]
        if not (isinstance(call, dict) and call.get("role") == "assistant" and isinstance(call.get(CALLS), dict)
                and isinstance(result, dict) and result.get("role") == "function"):
            continue
        fn = call[CALLS]
        call_id = legacy_call_id(i)
        made = {"id": call_id, "type": "function",
                "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""}}
        out[i] = {k: v for k, v in call.items() if k != CALLS} | {"tool_calls": [made]}
        tool = {k: v for k, v in result.items() if k != "name"}
        out[i + 1] = tool | {"role": "tool", "tool_call_id": call_id,
                             "content": result.get("content") if result.get("content") is not None else ""}
    return out


def as_function_call(obj: dict[str, Any], *, forced: bool = False) -> dict[str, Any]:
    """A ``chat.completion`` object in the legacy shape: each choice's first tool call as ``message.function_call``
    (``{name, arguments}``), no ``tool_calls``, and OpenAI's ``finish_reason`` (``legacy_finish``)."""
    for choice in obj.get("choices") or ():
        message = choice.get("message") or {}
        calls = message.pop("tool_calls", None)
        if calls:
            fn = calls[0]["function"]
            message[CALLS] = {"name": fn["name"], "arguments": fn["arguments"]}
        choice["finish_reason"] = legacy_finish(choice.get("finish_reason"), called=bool(calls), forced=forced)
    return obj


class LegacyStream:
    """One streamed answer's chunks in the legacy shape, in order: its first call's pieces as ``delta.function_call``
    and OpenAI's ``finish_reason`` (``legacy_finish``), which needs to know whether a call came before it."""

    def __init__(self, *, forced: bool = False) -> None:
        self.forced = forced
        self.called = False  # a call's piece was in an earlier chunk

    def chunk(self, event: Event) -> Event:
        """A stream's chunk in the legacy shape (``_delta``); one without calls, before any call, as it came."""
        if isinstance(event, str) and not self.called and "tool_calls" not in event:
            return event  # relayed byte for byte, unparsed
        obj = loads(event) if isinstance(event, str) else dict(event)
        if not isinstance(obj, dict):
            return event
        obj["choices"] = [dict(c) for c in obj.get("choices") or () if isinstance(c, dict)]
        for choice in obj["choices"]:
            if isinstance(choice.get("delta"), dict):
                choice["delta"] = dict(choice["delta"])
            self._delta(choice)
        return dumps(obj)

    def events(self, batch: list[Event]) -> list[Event]:
        """``chunk`` of each event of ``batch``."""
        return [self.chunk(e) for e in batch]

    def _delta(self, choice: dict[str, Any]) -> None:
        """One streamed choice in the legacy shape: its first call's pieces (index 0: the name, then the arguments)
        as ``delta.function_call``, any other call's dropped."""
        delta = choice.get("delta")
        calls = delta.pop("tool_calls", None) if isinstance(delta, dict) else None
        first = [c for c in calls or () if isinstance(c, dict) and c.get("index", 0) == 0]
        fn = first[0].get("function") if first else None
        if isinstance(fn, dict):
            piece = {k: fn[k] for k in ("name", "arguments") if isinstance(fn.get(k), str)}
            if piece:
                delta[CALLS] = piece  # type: ignore[index]
                self.called = True
        if choice.get("finish_reason"):
            choice["finish_reason"] = legacy_finish(choice["finish_reason"], called=self.called, forced=self.forced)
