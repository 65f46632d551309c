"""OpenAI's ``finish_reason`` for an answer to a tools request, whatever word the miner's model server used.

OpenAI ends an answer holding a call the model chose (``tool_choice`` ``"auto"``, ``"required"``, an
``allowed_tools`` list) ``tool_calls``, and one holding a call of the function ``tool_choice`` names ``stop``.
Model servers differ: vLLM ends a named call ``stop``, others ``tool_calls``, and some end every call ``stop``.
The miner's word was passed on, so the same request's call ended ``tool_calls`` from one miner and ``stop`` from
another, and code that checks ``finish_reason == "tool_calls"`` (OpenAI's cookbook loop) read it as no call.
Only an answer that ended on its own is put in OpenAI's word: ``length`` (the caller's limit cut it) and
``content_filter`` stay as they came. ``legacy_functions`` does the same for the legacy shape.
"""

from __future__ import annotations

from typing import Any

from shared.jsonutil import dumps, loads
from shared.miner_client import Event

ENDED = ("stop", "tool_calls")  # a miner's words for an answer that ended on its own (not cut, not filtered)
CALLS = "tool_calls"


def tools_finish(reason: Any, *, called: bool, forced: bool, calls: str = CALLS) -> Any:
    """OpenAI's ``finish_reason`` for an answer that ended on its own (``ENDED``): ``calls`` when it holds a call
    the model chose to make, ``stop`` when the caller named the function or there is no call; any other as it
    came."""
    if reason not in ENDED:
        return reason
    return calls if called and not forced else "stop"


def named_choice(tool_choice: Any) -> bool:
    """Whether ``tool_choice`` names the function to call (OpenAI then ends the call ``stop``)."""
    return isinstance(tool_choice, dict) and tool_choice.get("type") == "function"


def asks_tools(tools: Any, tool_choice: Any) -> bool:
    """Whether a request may get a call in answer: it has tools, and ``tool_choice`` is not ``"none"``."""
    return bool(tools) and tool_choice != "none"


class ToolsFinishStream:
    """One streamed answer's chunks with OpenAI's ``finish_reason`` (``tools_finish``), which needs to know
    whether a call came before it. A chunk that neither holds a call nor ends the answer goes as it came."""

    def __init__(self, *, forced: bool = False) -> None:
        self.forced = forced
        self.called = False  # a call's piece was in an earlier chunk

    def chunk(self, event: Event) -> Event:
        if isinstance(event, str) and '"tool_calls"' not in event and not _may_end(event):
            return event  # relayed byte for byte, unparsed
        obj = loads(event) if isinstance(event, str) else event
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return event
        choices, changed = [], False
        for choice in obj["choices"]:  # copied where changed: a parsed event is the race's too (it is scored)
            if isinstance(choice, dict):
                delta = choice.get("delta")
                self.called = self.called or bool(isinstance(delta, dict) and delta.get("tool_calls"))
                reason = choice.get("finish_reason")
                word = tools_finish(reason, called=self.called, forced=self.forced) if reason else reason
                if word != reason:
                    choice, changed = {**choice, "finish_reason": word}, True
            choices.append(choice)
        return dumps({**obj, "choices": choices}) if changed else event

    def events(self, batch: list[Event]) -> list[Event]:
        """``chunk`` of each event of ``batch``."""
        return [self.chunk(e) for e in batch]


def finish_stream(req: Any) -> ToolsFinishStream | None:
    """The shaper of a chat stream's ``finish_reason`` when the request (a ``ChatCompletionRequest``) may get a
    call in answer; None: its chunks go as they came."""
    if not asks_tools(req.tools, req.tool_choice):
        return None
    return ToolsFinishStream(forced=named_choice(req.tool_choice))


def _may_end(event: str) -> bool:
    """Whether a chunk's text may hold a ``finish_reason`` other than null (one that does is parsed)."""
    at = event.find('"finish_reason"')
    return at >= 0 and not event[at + 15:at + 24].lstrip(": ").startswith("null")
