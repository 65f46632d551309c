"""A Responses API request as the chat completion the miners answer.

Miners speak chat completions (so do the model servers behind them), and the
validator scores chat completions: a response is served by translating its
request into one, racing it like any other, and rendering the winner as a
response (``api/responses_render.py``). The translation is exact for what both
APIs share (messages, function tools and calls, structured output, sampling);
anything else is refused with a 400 naming its place in the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from api.responses_wire import (
    NO_ITEM_REFERENCES,
    WEB_SEARCH_TYPES,
    AllowedTools,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    TextFormat,
    Tool,
    WebSearchCallItem,
    is_item_reference,
)
from shared.content_parts import NO_FILE_STORE
from shared.errors import ApiError, empty_array, invalid_value, missing_parameter, shown_name
from shared.http import parse_model
from shared.jsonutil import dumps
from shared.protocol import passed_on, tool_results_without_call, unanswered_call, unanswered_tool_result

ITEMS: dict[str, type[MessageItem | FunctionCallItem | FunctionCallOutputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}
# A model's reasoning summary and an earlier turn's web search (its results are not in the item; the
# answer that used them follows as a message): no chat message holds them.
SKIPPED_ITEMS: dict[str, type[ReasoningItem | WebSearchCallItem]] = {
    "reasoning": ReasoningItem, "web_search_call": WebSearchCallItem}
LOGPROBS = "message.output_text.logprobs"  # the include that asks for the answer's token log probabilities
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
TOOL_FIELDS = {"name", "description", "parameters", "strict"}  # a chat tool's function, from a flat tool
TOOL_CHOICES = ("tool_choice must be 'none', 'auto', 'required', "  # the forms this API takes, for its 400
                '{"type": "function", "name": ...}, {"type": "web_search"} or '
                '{"type": "allowed_tools", "mode": ..., "tools": [...]}')
# The request's fields a chat completion has too (OpenAI's, then the subnet's): a chat caller's reach the
# miners as sent, so a response's do.
PASSED_ON = ("model", "temperature", "top_p", "parallel_tool_calls", "user", "seed", "prompt_cache_key",
             "safety_identifier", "task", "uids", "mixture", "inference_mode", "timeout", "session_id",
             "sampling_parameters")


def chat_body(r: ResponsesRequest, history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The chat completion request (JSON) that ``r`` asks for; ``history``: the stored conversation it
    continues (``previous_response_id``: input and output items of the responses before), between ``r``'s
    instructions (the earlier ones are not carried over, as at OpenAI) and its input."""
    messages: list[dict[str, Any]] = []
    if r.instructions:
        messages.append({"role": "system", "content": r.instructions})
    for i, raw in enumerate(history):
        _add_item(messages, raw, f"previous_response_id.{i}")
    start = len(messages)
    if isinstance(r.input, str):
        messages.append({"role": "user", "content": r.input})
    else:
        for i, raw in enumerate(r.input):
            _has_content(raw, f"input.{i}")
            _add_item(messages, raw, f"input.{i}")
        if not messages:
            raise invalid_value("input", "input has no message to answer (reasoning and web_search_call items are "
                                         "skipped)")
    _check_outputs_answer_calls(messages, start, history, r.conversation_id)
    _check_calls_answered(messages)
    body: dict[str, Any] = {"messages": answers_after_calls(messages), "stream": r.stream}
    if r.stream:
        body["stream_options"] = {"include_usage": True}  # for the usage of response.completed
    body.update(passed_on(r, PASSED_ON))
    if r.max_output_tokens is not None:
        body["max_tokens"] = r.max_output_tokens
    if LOGPROBS in (r.include or []):  # as at OpenAI, top_logprobs alone asks for nothing
        body["logprobs"] = True
        if r.top_logprobs is not None:
            body["top_logprobs"] = r.top_logprobs
    allowed = _allowed(r)  # parsed and checked once for the tools and the choice
    tools = miner_tools(r, allowed)
    if tools:
        body["tools"] = [{"type": "function", "function": t.model_dump(include=TOOL_FIELDS, exclude_none=True)}
                         for t in tools]
    else:
        # No tool reaches the miners (none sent, or web search only, which the API runs): chat servers refuse
        # tool_choice and parallel_tool_calls without tools (OpenAI, vLLM), and Codex always sends the latter.
        body.pop("parallel_tool_calls", None)
    choice = _tool_choice(r, tools, allowed)
    if r.max_tool_calls == 0 and _search_required(r, allowed):
        raise invalid_value("max_tool_calls", "tool_choice requires a web search call, and max_tool_calls: 0 "
                                              "allows no call to a built-in tool")
    # "auto" and "none" mean nothing without tools; any other choice goes on, for the chat check's 400
    if choice is not None and (tools or choice not in ("auto", "none")):
        body["tool_choice"] = choice
    if r.reasoning is not None and r.reasoning.effort is not None:
        body["reasoning_effort"] = r.reasoning.effort
    if r.text is not None and r.text.verbosity is not None:
        body["verbosity"] = r.text.verbosity
    fmt = r.text.format if r.text else None
    if fmt is not None and fmt.type != "text":
        body["response_format"] = _response_format(fmt)
    return body


def truncated(body: dict[str, Any], keep: float = 0.5) -> dict[str, Any] | None:
    """``body`` with the oldest turns of its conversation dropped, for ``truncation: "auto"`` once the miners'
    models refused it as longer than their context window (OpenAI drops items from the beginning of the
    conversation): as many as leave about ``keep`` of its text (``kept_share``), one at least; None when
    nothing is left to drop. The system messages it opens with (``instructions``) and its last message
    stay; a tool result whose call was dropped goes too (chat servers refuse it), unless the conversation ends
    with it: the call then stays with the results that end it (an agent's turn answering a long tool result)."""
    messages = body["messages"]
    head = 0
    while head < len(messages) and messages[head]["role"] in ("system", "developer"):
        head += 1
    rest = messages[head:]
    if len(rest) <= 1:
        return None
    sizes = [len(dumps(m)) for m in rest]
    # what is left from ``first`` on, kept as it goes (summed again for each message dropped, it took 7 s of the
    # event loop for 20,000 messages)
    budget, first = keep * sum(sizes), 1
    left = sum(sizes) - sizes[0]
    while first < len(rest) - 1 and left > budget:
        left -= sizes[first]
        first += 1
    while first < len(rest) - 1 and rest[first]["role"] == "tool":
        first += 1
    while first > 0 and rest[first]["role"] == "tool":  # only the last turn's results are left: back to their call
        first -= 1
    if first == 0:
        return None
    kept = rest[first:]
    orphans = {i for i, _ in tool_results_without_call(_turns(kept))}  # their calls were in what was dropped
    return body | {"messages": messages[:head] + [m for i, m in enumerate(kept) if i not in orphans]}


# A model server's numbers in its refusal: the context it has (OpenAI and vLLM "maximum context length is N",
# SGLang "the model's context length (N tokens)"), and what was asked (OpenAI "your messages resulted in N",
# vLLM "you requested N tokens (P in the messages, C in the completion)", SGLang "The input (N tokens)").
_LIMIT = re.compile(r"(?:maximum context length is|context length \()\s*(\d+)", re.I)
_ASKED = re.compile(r"(?:resulted in|requested|input \()\s*(\d+)", re.I)
_PARTS = re.compile(r"(\d+) in the messages, (\d+) in the completion", re.I)


def kept_share(refusal: str) -> float:
    """How much of the conversation's text fits, from the numbers in the miners' refusal (with a tenth to
    spare: their tokens are not our characters); half when it gives none."""
    limit, asked, parts = _LIMIT.search(refusal), _ASKED.search(refusal), _PARTS.search(refusal)
    if limit is None or asked is None:
        return 0.5
    room, used = int(limit.group(1)), int(asked.group(1))
    if parts is not None:  # the answer's tokens are asked for too: the messages get what they leave
        room, used = room - int(parts.group(2)), int(parts.group(1))
    if room <= 0 or used <= 0:
        return 0.5
    return max(0.05, min(0.9, 0.9 * room / used))


def check_items(items: Sequence[dict[str, Any]], at: str) -> None:
    """Refuse, with ``input``'s 400 naming the place (``{at}.{i}``), any item ``input`` would refuse: items
    kept for later turns (a conversation's) are checked when they come, not when a turn meets them."""
    scratch: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        _add_item(scratch, raw, f"{at}.{i}")


def _add_item(messages: list[dict[str, Any]], raw: dict[str, Any], at: str) -> None:
    if is_item_reference(raw):  # resolved to the item it names before (responses_state.resolved)
        raise invalid_value(at, NO_ITEM_REFERENCES)
    kind = _type_of(raw, at, default="message" if "role" in raw else None)  # no type: a message, if it has a role
    if kind in SKIPPED_ITEMS:  # checked all the same: kept (a conversation's, a stored response's), then listed
        parse_model(SKIPPED_ITEMS[kind], raw, at=at)
        return
    model = ITEMS.get(kind or "")
    if model is None:
        raise invalid_value(f"{at}.type", f"input items served here are {', '.join(ITEMS)}, item_reference "
                                          f"(and reasoning and web_search_call, skipped); not {shown_name(repr(kind))}")
    item = parse_model(model, raw, at=at)
    last = messages[-1] if messages else None
    turn = last if last is not None and last["role"] == "assistant" else None  # the assistant turn going on
    if isinstance(item, MessageItem):
        message = _message(item, at)
        if message["role"] == "assistant" and turn is not None and turn.get("tool_calls"):
            # Text after a call in one turn (this API streams it as its own item): chat wants the turn's
            # text and calls in one message, its tool results right after it, or its servers answer 400.
            turn["content"] = (turn["content"] or "") + message["content"]
        else:
            messages.append(message)
    elif isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        if turn is not None:  # the calls of one turn go in one message
            turn.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    else:
        output = item.output if isinstance(item.output, str) else _joined_text(item.output, f"{at}.output")
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})


def _has_content(raw: dict[str, Any], at: str) -> None:
    """OpenAI's 400 (``empty_array``) for a message of the caller's ``input`` whose ``content`` is an empty list:
    it was sent on as a message with nothing in it, and the model answered nothing (an empty user turn). Items
    read back (a stored response's, a conversation's) are not checked: they were kept as they came."""
    if raw.get("content") == [] and raw.get("type", "message") == "message":
        raise empty_array(f"{at}.content")


def _turns(messages: list[dict[str, Any]]) -> Iterator[tuple[str, Any, Any]]:
    """Each chat message's role, calls and the call it answers, as the tool-turn checks read them."""
    return ((m["role"], m.get("tool_calls"), m.get("tool_call_id")) for m in messages)


def _check_outputs_answer_calls(messages: list[dict[str, Any]], start: int, history: Sequence[dict[str, Any]],
                                conversation_id: str | None) -> None:
    """Each ``function_call_output`` answers a call made before it (in the input, or in the conversation it
    continues): an orphan, a call id mistyped or a call left out, is OpenAI's 400, in its words, rather than a tool
    result the model has no call for (chat servers refuse it, or answer nonsense). One in the conversation before
    ``start`` names the field that brought it (``previous_response_id``, ``conversation``): it met chat's check,
    whose words and ``messages.[N]`` a Responses caller has no use for. In a ``conversation`` (its call item
    deleted) it stays until the caller deletes it, refusing every turn: the 400 names the item and its route."""
    orphan = unanswered_tool_result(_turns(messages))
    if orphan is None:
        return
    message = f"No tool call found for function call output with call_id {str(orphan[1])[:256]}."
    if orphan[0] >= start:
        raise ApiError(400, message, param="input")
    if conversation_id is None:
        raise ApiError(400, message, param="previous_response_id")
    item_id = orphaned_output_id(history, orphan[1])
    raise ApiError(400, f"{message} It is the conversation's item {item_id} (its function_call item was deleted); "
                        f"delete it (DELETE /v1/conversations/{conversation_id}/items/{item_id}) to go on.",
                   param="conversation")


def orphaned_output_id(history: Sequence[dict[str, Any]], call_id: Any) -> str:
    """The id of the first ``function_call_output`` of ``history`` answering ``call_id``: the orphan the check
    found (a later output of that call id answers no earlier call either, or the first would not be one)."""
    return next(str(item.get("id")) for item in history
                if item.get("type") == "function_call_output" and item.get("call_id") == call_id)


def _check_calls_answered(messages: list[dict[str, Any]]) -> None:
    """Each function call of the conversation (the previous response's or the ``conversation``'s last calls, or one
    in ``input``) has its ``function_call_output`` after it: OpenAI's 400, in its words, naming the call, rather than
    a model asked to go on without the call's result (it answers as if the call had not been made, or makes it
    again). The Agents SDK's turn after a response that ended in calls sends their outputs."""
    unanswered = unanswered_call(_turns(messages))
    if unanswered is not None:  # OpenAI's Responses API names one call
        raise ApiError(400, f"No tool output found for function call {str(unanswered[1][0])[:256]}.", param="input")


def answers_after_calls(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each tool result moved up to right after the assistant message that made its call (after
    the results already there), the rest in order. This API pairs an output with its call by id wherever it sits
    (a message or another turn's items may come between: Codex sends so); chat wants a call's results before any
    other message, or refuses the conversation (OpenAI's 400, and the chat checks' here)."""
    turns: list[list[dict[str, Any]]] = []
    turn_of: dict[Any, list[dict[str, Any]]] = {}  # a call id -> the turn of the message that last made it
    for message in messages:
        turn = turn_of.get(message.get("tool_call_id")) if message["role"] == "tool" else None
        if turn is not None:
            turn.append(message)
            continue
        turns.append([message])
        turn_of.update((call.get("id"), turns[-1]) for call in message.get("tool_calls") or ())
    return [message for turn in turns for message in turn]


def _message(item: MessageItem, at: str) -> dict[str, Any]:
    if isinstance(item.content, str):
        return {"role": item.role, "content": item.content}
    if item.role == "assistant":  # what the model said before: its text (output_text and refusal parts)
        return {"role": "assistant", "content": _joined_text(item.content, f"{at}.content")}
    return {"role": item.role, "content": [_part(p, f"{at}.content.{i}") for i, p in enumerate(item.content)]}


def _part(part: dict[str, Any], at: str) -> dict[str, Any]:
    kind = _type_of(part, at)
    if kind in TEXT_PARTS:
        return {"type": "text", "text": _text_of(part, at)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise invalid_value(f"{at}.image_url", f"an input_image needs an image_url (a URL or a data: URL); "
                                                   f"{NO_FILE_STORE}")
        image = {"url": url} | ({"detail": part["detail"]} if isinstance(part.get("detail"), str) else {})
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return _file(part, at)
    raise invalid_value(f"{at}.type", f"content parts served here are input_text, input_image and input_file, "
                                      f"not {shown_name(repr(kind))}")


def _file(part: dict[str, Any], at: str) -> dict[str, Any]:
    """An ``input_file`` with its bytes is chat's ``file`` part, which chat completions pass on to the miners'
    model servers as they are: the same PDF is served whichever API it comes through (the Vercel AI SDK sends
    one as ``file_data`` to the Responses API, its default). A file id or URL names what no miner can read."""
    data = part.get("file_data")
    if not isinstance(data, str):
        raise invalid_value(f"{at}.file_data", f"an input_file needs its file_data (base64, or a data: URL); "
                                               f"{NO_FILE_STORE}, and file URLs are not fetched")
    name = part.get("filename")
    return {"type": "file", "file": {"file_data": data} | ({"filename": name} if isinstance(name, str) else {})}


def _joined_text(parts: list[dict[str, Any]], at: str) -> str:
    texts = []
    for i, part in enumerate(parts):
        kind = _type_of(part, f"{at}.{i}")
        if kind not in TEXT_PARTS and kind != "refusal":
            raise invalid_value(f"{at}.{i}.type", f"only text parts are served here, not {shown_name(repr(kind))}")
        texts.append(_text_of(part, f"{at}.{i}", field="refusal" if kind == "refusal" else "text"))
    return "".join(texts)


def _type_of(obj: dict[str, Any], at: str, default: str | None = None) -> str | None:
    kind = obj.get("type", default)
    if kind is not None and not isinstance(kind, str):
        raise invalid_value(f"{at}.type", "must be a string")
    return kind


def _text_of(part: dict[str, Any], at: str, field: str = "text") -> str:
    text = part.get(field)
    if field not in part:  # OpenAI's 400 for it (a null is a value, and not a string)
        raise missing_parameter(f"{at}.{field}")
    if not isinstance(text, str):
        raise invalid_value(f"{at}.{field}", "must be a string")
    return text


def search_tool(r: ResponsesRequest) -> Tool | None:
    """The web search tool to search the web with before the answer: offered, and not ruled out by
    ``tool_choice`` (``none``, one function by name, or ``allowed_tools`` not listing it); None: no search.

    OpenAI's model decides for itself whether to search; here the search runs once, before the
    miners answer, on the conversation's last user message, and its results are the answer's context.
    ``max_tool_calls: 0`` allows no call to a built-in tool: no search (any other bound allows this one)."""
    choice = r.tool_choice
    if r.max_tool_calls == 0 or choice == "none" or (isinstance(choice, dict) and choice.get("type") == "function"):
        return None
    allowed = _allowed(r)
    if allowed is not None and not any(t.get("type") in WEB_SEARCH_TYPES for t in allowed.tools):
        return None
    return r.web_search


def _search_required(r: ResponsesRequest, allowed: AllowedTools | None) -> bool:
    """Whether ``tool_choice`` demands the web search: it names it, or requires a call and web search is
    the only tool it leaves. With ``max_tool_calls: 0`` such a request cannot be met: a 400, not a
    search made against the bound or a required call skipped in silence."""
    choice = r.tool_choice
    if r.web_search is None:
        return False
    if isinstance(choice, dict) and choice.get("type") in WEB_SEARCH_TYPES:
        return True
    if allowed is not None:
        return allowed.mode == "required" and not miner_tools(r, allowed)
    return choice == "required" and not r.function_tools


def miner_tools(r: ResponsesRequest, allowed: AllowedTools | None) -> list[Tool]:
    """The function tools the miners get: every one, or only those an ``allowed_tools`` choice lists.

    OpenAI's model still sees the others but may not call them; a chat request cannot say so (model
    servers take no such choice), so the miners are offered only the allowed ones, and a call to any
    other fails the miner as a call to a tool not offered."""
    if allowed is None:
        return r.function_tools
    names = {t.get("name") for t in allowed.tools if t.get("type") == "function"}
    return [t for t in r.function_tools if t.name in names]


def _allowed(r: ResponsesRequest) -> AllowedTools | None:
    """The ``allowed_tools`` choice, each tool it lists checked to be one of ``tools`` (None: another choice)."""
    choice = r.tool_choice
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return None
    allowed: AllowedTools = parse_model(AllowedTools, choice, at="tool_choice")
    functions = {t.name for t in r.function_tools}
    for i, tool in enumerate(allowed.tools):
        kind, name = _type_of(tool, f"tool_choice.tools.{i}"), tool.get("name")
        if not ((kind == "function" and isinstance(name, str) and name in functions)
                or (kind in WEB_SEARCH_TYPES and r.web_search is not None)):
            raise invalid_value(f"tool_choice.tools.{i}", "allowed_tools may list only the request's own tools "
                                                          '({"type": "function", "name": ...} or web search)')
    return allowed


def _tool_choice(r: ResponsesRequest, tools: list[Tool], allowed: AllowedTools | None) -> str | dict[str, Any] | None:
    """The chat request's ``tool_choice`` (``tools``: the miners' tools): web search is not a miner's tool,
    so a choice of it (or ``required`` with web search the only tool) is met by the search and leaves the
    miners free."""
    choice = r.tool_choice
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):  # the chat check's 400 would name chat's forms
            raise invalid_value("tool_choice", TOOL_CHOICES)
        return None if choice == "required" and r.web_search is not None and not r.function_tools else choice
    kind = _type_of(choice, "tool_choice")  # a string (a list was a TypeError in the set lookup: a 500)
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind in WEB_SEARCH_TYPES:
        if r.web_search is None:
            raise invalid_value("tool_choice", "tool_choice names web search, which is not among the tools")
        return None
    if kind == "allowed_tools":
        assert allowed is not None  # _allowed parsed this very choice
        return allowed.mode if tools else None  # only web search allowed: met by the search, as above
    raise invalid_value("tool_choice", TOOL_CHOICES)


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    if fmt.type == "json_object":
        return {"type": "json_object"}
    for field, value in (("name", fmt.name), ("schema", fmt.schema_)):
        if value is None:  # OpenAI's 400 names the field left out (this named only text.format)
            raise missing_parameter(f"text.format.{field}")
    if not fmt.name:
        raise invalid_value("text.format.name", "a json_schema format needs a name")
    schema = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}
