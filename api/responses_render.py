"""A winning chat answer rendered as a Responses API response: one object, or its stream of events.

The stream follows OpenAI's event sequence, which the SDK's ``responses.stream()``
checks item by item: ``response.created``, ``response.in_progress``, then per
output item ``output_item.added`` (and ``content_part.added`` for a message or
a reasoning item), its deltas, its ``.done`` events, and finally
``response.completed`` (or ``response.incomplete`` / ``response.failed``)
carrying the whole response. Every event has a ``sequence_number``; there is no
``[DONE]``. A reasoning model's thinking (chat's ``reasoning_content``) is a
``reasoning`` item with ``reasoning_text`` content, as OpenAI gives an
open-weight model's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

from api.responses_wire import ResponsesRequest
from shared.ids import random_hex
from shared.jsonutil import dumpb, loads
from shared.miner_client import Event
from shared.protocol import SERVICE_TIER, token_count

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_hex()}"


def usage_in_responses_words(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's usage in the Responses API's words (the model server's cached, cache-written
    and reasoning token counts carried over when it gave them). Every detail is there, 0 when unknown:
    the SDK's types require them (``cache_write_tokens`` was missing: the SDK read None, a typed
    client refused the response)."""
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": _detail(usage, "prompt_tokens_details", "cached_tokens"),
                                     "cache_write_tokens": _detail(usage, "prompt_tokens_details",
                                                                   "cache_write_tokens")},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": _detail(usage, "completion_tokens_details",
                                                                  "reasoning_tokens")},
            "total_tokens": prompt + completion}


def _detail(usage: dict[str, Any], group: str, name: str) -> int:
    details = usage.get(group)
    return token_count(details.get(name) if isinstance(details, dict) else None) or 0


def skeleton(r: ResponsesRequest, *, response_id: str, model: str, store: bool = False,
             created_at: int | None = None) -> dict[str, Any]:
    """The response object before its output: what the request asked for, echoed as OpenAI does."""
    return {"id": response_id, "object": "response", "status": "in_progress",
            "created_at": int(time.time()) if created_at is None else created_at,
            "completed_at": None, "error": None, "incomplete_details": None, "model": model, "output": [],
            "usage": None} | echoed(r, store=store)


def echoed(r: ResponsesRequest, *, store: bool = False) -> dict[str, Any]:
    """The request's settings as the response repeats them, OpenAI's default where it shows one and the
    field was left out, so a caller reads what its answer was made with.

    Some say what happened rather than what was asked, as OpenAI's do: ``store`` is whether this response
    is being stored (``store: false`` asked, storage off on the gateway, or a response over the size bound:
    false), ``service_tier`` is ``default`` (there is no other tier here). ``temperature`` and ``top_p``
    left out stay null, not OpenAI's 1: each miner's model server then samples with its model's own
    default, which this gateway does not know."""
    fmt = r.text.format if r.text and r.text.format else None
    return {
        "background": r.background is True,
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "max_tool_calls": r.max_tool_calls,
        "metadata": r.metadata or {},
        "parallel_tool_calls": r.parallel_tool_calls if r.parallel_tool_calls is not None else True,
        "previous_response_id": r.previous_response_id,
        "conversation": {"id": r.conversation_id} if r.conversation_id else None,
        "prompt_cache_key": r.prompt_cache_key,
        "prompt_cache_retention": r.prompt_cache_retention,
        "reasoning": {"effort": r.reasoning.effort if r.reasoning else None,
                      "summary": r.reasoning.summary if r.reasoning else None},
        "safety_identifier": r.safety_identifier,
        "service_tier": SERVICE_TIER,
        "store": store,
        "temperature": r.temperature,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
                 "verbosity": r.text.verbosity if r.text and r.text.verbosity else "medium"},
        "tool_choice": r.tool_choice if r.tool_choice is not None else "auto",
        "tools": [t.model_dump(exclude_none=True) for t in r.tools or []],
        "top_logprobs": r.top_logprobs if r.top_logprobs is not None else 0,
        "top_p": r.top_p,
        "truncation": r.truncation or "disabled",
        "user": r.user,
    }


def message_item(item_id: str, text: str, *, status: str = "completed",
                 logprobs: list[Any] | None = None) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [] if status == "in_progress" else [output_text(text, logprobs)]}


def output_text(text: str, logprobs: list[Any] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": list(logprobs or [])}


def reasoning_item(item_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    """A reasoning model's thinking (chat's ``reasoning_content``): OpenAI's ``reasoning`` item with its
    raw text as ``reasoning_text`` content (no summary: no miner writes one)."""
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [] if status == "in_progress" else [reasoning_text(text)]}


def reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def thought_of(delta: dict[str, Any]) -> str:
    """A chunk's thinking, under either name the race reads (``api/race.py``)."""
    thought = delta.get("reasoning_content") or delta.get("reasoning")
    return thought if isinstance(thought, str) else ""


def refusal_part(text: str) -> dict[str, Any]:
    """The model declined (chat's ``refusal``): OpenAI's ``refusal`` content part, which the SDK's
    ``responses.parse`` reports instead of parsing an answer that is not there."""
    return {"type": "refusal", "refusal": text}


def call_item(call: dict[str, Any], *, arguments: str) -> dict[str, Any]:
    """A ``function_call`` item for a chat tool call (whole, or the first delta of one)."""
    fn = call.get("function") or {}
    return {"id": new_id("fc"), "type": "function_call", "status": "completed",
            "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "", "arguments": arguments}


def finished(base: dict[str, Any], output: list[dict[str, Any]], *, finish_reason: str | None,
             usage: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """The response object once the answer is in: its status, and each item's, say whether it is whole."""
    # a model server's own word for a cut (TGI's max_tokens) came as chat's "length" (race.absorb): incomplete
    reason = INCOMPLETE.get(finish_reason or "")
    status = "failed" if error is not None else "incomplete" if reason else "completed"
    answer = [item for item in output if item["type"] != "web_search_call"]  # a search ended before the answer
    for i, item in enumerate(answer):  # only the last item was cut short: those before it are whole
        item["status"] = "completed" if status == "completed" or i < len(answer) - 1 else "incomplete"
    obj = base | {"status": status, "output": output, "usage": usage_in_responses_words(usage),
                  "completed_at": int(time.time()) if status == "completed" else None}  # as OpenAI's: only then
    if error is not None:
        obj["error"] = {"code": "server_error", "message": error}
    elif reason:
        obj["incomplete_details"] = {"reason": reason}
    return obj


def complete_output(text: str, tool_calls: list[dict[str, Any]] | None,
                    logprobs: list[Any] | None = None, refusal: str = "", reasoning: str = "", *,
                    finish_reason: str | None = None) -> list[dict[str, Any]]:
    """The output items of a finished answer: its thinking (if any), its text as a message (if any, or
    empty if there is neither a call nor a refusal and the answer ended whole: ``says_nothing``), a refusal as a
    message of one refusal part (after the text, as the stream gives both: the text's message had dropped it),
    then each call."""
    output = [reasoning_item(new_id("rs"), reasoning)] if reasoning else []
    if text or (not (tool_calls or refusal) and says_nothing(finish_reason)):
        output.append(message_item(new_id("msg"), text, logprobs=logprobs))
    if refusal:
        output.append(message_item(new_id("msg"), "") | {"content": [refusal_part(refusal)]})
    for call in tool_calls or []:
        output.append(call_item(call, arguments=(call.get("function") or {}).get("arguments") or ""))
    return output


def says_nothing(finish_reason: str | None) -> bool:
    """Whether an answer with neither text, a refusal nor a call is an empty message: one that ended whole (a model
    that stops at once says ``""``); one cut short (``incomplete``: the limit came before a word) has no message,
    as OpenAI gives it (only its thinking, if any): its ``output_text`` "" either way."""
    return finish_reason not in INCOMPLETE


def event_logprobs(tokens: list[Any]) -> list[Any]:
    """Tokens' log probabilities as OpenAI's text events give them: ``token``, ``logprob`` and ``top_logprobs``
    (each a token and its logprob), without chat's ``bytes``, which only the output_text part has."""
    return [{"token": t.get("token"), "logprob": t.get("logprob"),
             "top_logprobs": [{"token": top.get("token"), "logprob": top.get("logprob")}
                              for top in t.get("top_logprobs") or () if isinstance(top, dict)]}
            for t in tokens if isinstance(t, dict)] if tokens else []


# An unfinished call's arguments up to this size are parsed at each of their deltas (``_whole_now``)
WHOLE_CHECK_BYTES = 4096


def _whole_json(text: str) -> bool:
    """Whether a call's arguments so far are a whole JSON value (an object's last piece has come)."""
    try:
        loads(text)
    except ValueError:
        return False
    return True


class ResponseStream:
    """Chat completion chunks in, Responses API events out (SSE bytes), in OpenAI's order.

    One item at a time, as OpenAI sends them: an item opens at its first delta, and the one before
    it is done first (its ``.done`` events), so text then calls is a done message, then each call.
    Text that resumes after a call is a new message. Clients rebuild their turns from this order
    (LangChain put an empty message after the calls when the message stayed open across them).

    A chat stream may interleave parallel calls' pieces (by their ``index``): a call whose arguments are not
    whole JSON yet when another item begins stays open (``unfinished``), and is done when they are, or at the
    end, so that its ``.done`` events (what apps run the call on) never carry half its arguments.
    """

    def __init__(self, base: dict[str, Any], *, annotate: Callable[[str], list[dict[str, Any]]] | None = None,
                 seal: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.base = base
        self.annotate = annotate  # the message's annotations, from its whole text (url citations)
        self.seal = seal  # sees (and may amend) the final response before its event is written: it is stored
        self.seq = 0
        self.items: list[dict[str, Any]] = []  # in output order; each the item as it will be when done
        self.closed = 0  # items[:closed] were whole before the answer began (a web search)
        self.search: int | None = None  # the index of a web search's item still running (``searching``)
        self.message: dict[str, Any] | None = None  # the open message, if the open item is one
        self.thinking: dict[str, Any] | None = None  # the open reasoning item, if the open item is one
        self.current: int | None = None  # the index of the item still open
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self.unfinished: set[int] = set()  # calls left open by a later item, their arguments not whole JSON yet
        # Each item's index, by its id(): looked up in ``items`` at each delta, a miner's answer of 20,000 calls held
        # the event loop 8 s (the items are kept in ``items``, so no id is reused)
        self._index_of: dict[int, int] = {}
        self._tried: dict[int, int] = {}  # an unfinished call's index -> its arguments' length when last not whole
        self.final: dict[str, Any] = {}  # the sealed final response, once ``closing`` made it

    def event(self, type_: str, **fields: Any) -> bytes:
        data = dumpb({"type": type_, "sequence_number": self.seq, **fields})
        self.seq += 1
        return b"event: " + type_.encode() + b"\ndata: " + data + b"\n\n"

    def start(self, *, queued: bool = False) -> bytes:
        """The stream's first events; a background response's, as OpenAI sends them, say it was ``queued`` (as
        the create call's answer did) before it is ``in_progress``."""
        if not queued:
            return self.event("response.created", response=self.base) + self.event("response.in_progress",
                                                                                     response=self.base)
        waiting = self.base | {"status": "queued"}
        return (self.event("response.created", response=waiting) + self.event("response.queued", response=waiting)
                + self.event("response.in_progress", response=self.base))

    def searched(self, item: dict[str, Any]) -> bytes:
        """The events of a ``web_search_call`` item that finished before the answer began (call right after
        ``start``): ``searching``'s, then ``search_done``'s."""
        return self.searching(item | {"status": "in_progress"}) + self.search_done(item)

    def searching(self, item: dict[str, Any]) -> bytes:
        """A ``web_search_call`` item's opening events (``item`` in progress), sent as its search begins: a
        streamed caller sees the search start instead of seconds of silence."""
        index = self._open(item)
        self.closed, self.current, self.search = len(self.items), None, index  # whole before the answer
        ids = {"output_index": index, "item_id": item["id"]}
        # Made one after another, in the order sent: each takes the next sequence_number (the completed
        # event, made first, had number 2 and came after 3, 4 and 5).
        return (self.event("response.output_item.added", output_index=index, item=item)
                + self.event("response.web_search_call.in_progress", **ids)
                + self.event("response.web_search_call.searching", **ids))

    def search_done(self, item: dict[str, Any]) -> bytes:
        """The closing events of the search ``searching`` opened (``item`` as it ended, under the same id)."""
        index = next(i for i, it in enumerate(self.items) if it["id"] == item["id"])
        self.items[index] = item
        self.search = None
        ids = {"output_index": index, "item_id": item["id"]}
        done = self.event("response.web_search_call.completed", **ids) if item["status"] == "completed" else b""
        return done + self.event("response.output_item.done", output_index=index, item=item)

    def search_failed(self) -> bytes:
        """The closing events of a web search the stream's failure (the search's own, or this process's stop) ended
        before it did: its item ``failed`` (OpenAI's word for a search call that did not finish), as a search no
        retrieval miner answered; b"" when none runs. It was left ``in_progress``, never done, in a stream whose
        every other item was."""
        if self.search is None:
            return b""
        return self.search_done(self.items[self.search] | {"status": "failed"})

    def so_far(self) -> list[dict[str, Any]]:
        """Every item its events opened, as far as it came, as a response that failed now has them (a background
        response its worker's shutdown, a failed search or its worker's death ended): one still open ``incomplete``,
        a search still running ``failed``, as ``ended`` then closes them. Such a response said no output at all, or
        only its search's, still ``in_progress``, after events that had done the items."""
        still = self._still_open()
        return [item | {"status": "failed" if item["type"] == "web_search_call" else "incomplete"}
                if index in still else item for index, item in enumerate(self.items)]

    def _still_open(self) -> set[int]:
        """The indexes of the items opened and not done: those left open, the open one, a search still running."""
        return {*self.unfinished, *(index for index in (self.current, self.search) if index is not None)}

    def feed(self, chunk: Event) -> bytes:
        """The events for one chat chunk (already checked by the race: an object with choices)."""
        obj = loads(chunk) if isinstance(chunk, str) else chunk
        out = []
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            if thought := thought_of(delta):  # a model thinks before it answers
                out.append(self._thought(thought))
            if delta.get("content"):
                logprobs = choice.get("logprobs")
                tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
                out.append(self._text(delta["content"], tokens if isinstance(tokens, list) else []))
            for call in delta.get("tool_calls") or []:
                out.append(self._call(call))
            if delta.get("refusal"):
                out.append(self._refusal(delta["refusal"]))
        return b"".join(out)

    def _refusal(self, piece: str) -> bytes:
        opened = b"" if self._open_part() == "refusal" else self._open_message(refusal_part(""))
        assert self.message is not None
        self.message["content"][0]["refusal"] += piece
        return opened + self.event("response.refusal.delta", item_id=self.message["id"],
                                   output_index=self._index_of[id(self.message)], content_index=0, delta=piece)

    def _thought(self, piece: str) -> bytes:
        opened = b"" if self.thinking is not None else self._open_reasoning()
        assert self.thinking is not None
        self.thinking["content"][0]["text"] += piece
        return opened + self.event("response.reasoning_text.delta", item_id=self.thinking["id"],
                                   output_index=self._index_of[id(self.thinking)], content_index=0, delta=piece)

    def _open_reasoning(self) -> bytes:
        closed = self._close_current()
        self.thinking = reasoning_item(new_id("rs"), "")
        index = self._open(self.thinking)
        return closed + (self.event("response.output_item.added", output_index=index,
                                    item=reasoning_item(self.thinking["id"], "", status="in_progress"))
                         + self.event("response.content_part.added", item_id=self.thinking["id"],
                                      output_index=index, content_index=0, part=reasoning_text("")))

    def _open_part(self) -> str | None:
        """The type of the open message's part (None: no message is open)."""
        return self.message["content"][0]["type"] if self.message is not None else None

    def _text(self, piece: str, logprobs: list[Any]) -> bytes:
        opened = b"" if self._open_part() == "output_text" else self._open_message()
        assert self.message is not None
        part = self.message["content"][0]
        part["text"] += piece
        part["logprobs"].extend(logprobs)
        return opened + self.event("response.output_text.delta", item_id=self.message["id"],
                                   output_index=self._index_of[id(self.message)], content_index=0, delta=piece,
                                   logprobs=event_logprobs(logprobs))

    def _open_message(self, part: dict[str, Any] | None = None) -> bytes:
        closed = self._close_current()
        part = part or output_text("")
        self.message = message_item(new_id("msg"), "") | {"content": [part]}
        index = self._open(self.message)
        return closed + (self.event("response.output_item.added", output_index=index,
                                    item=message_item(self.message["id"], "", status="in_progress"))
                         + self.event("response.content_part.added", item_id=self.message["id"], output_index=index,
                                      content_index=0, part=dict(part)))

    def _call(self, call: dict[str, Any]) -> bytes:
        fn = call.get("function") or {}
        slot = int(call.get("index", len(self.calls)))
        item = self.calls.get(slot)
        opened = b""
        if item is None:
            closed = self._close_current()
            item = self.calls[slot] = call_item(call, arguments="")
            index = self._open(item)
            opened = closed + self.event("response.output_item.added", output_index=index,
                                         item=item | {"status": "in_progress"})
        elif fn.get("name"):
            item["name"] += fn["name"]
        arguments = fn.get("arguments") or ""
        if not arguments:
            return opened
        item["arguments"] += arguments
        index = self._index_of[id(item)]
        delta = self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                           delta=arguments)
        if index in self.unfinished and self._whole_now(index, item["arguments"]):
            self.unfinished.remove(index)
            return opened + delta + self._close(index, item)
        return opened + delta

    def _whole_now(self, index: int, arguments: str) -> bool:
        """Whether an unfinished call's arguments are whole JSON now. Past ``WHOLE_CHECK_BYTES`` they are parsed
        again only each time they doubled (each delta parsed them whole: 300 KB of arguments in 10-byte deltas held
        the event loop 3.4 s); a call left open so is done at the end with the others (``closing``)."""
        if len(arguments) > WHOLE_CHECK_BYTES and len(arguments) < 2 * self._tried.get(index, 0):
            return False
        if _whole_json(arguments):
            return True
        self._tried[index] = len(arguments)
        return False

    def _open(self, item: dict[str, Any]) -> int:
        self.items.append(item)
        self.current = len(self.items) - 1
        self._index_of[id(item)] = self.current
        return self.current

    def _close_current(self) -> bytes:
        """The open item's ``.done`` events (b"" when none is open, or when it is a call whose arguments are
        not whole yet: it is left ``unfinished``)."""
        if self.current is None:
            return b""
        index, self.current, self.message, self.thinking = self.current, None, None, None
        item = self.items[index]
        if item["type"] == "function_call" and not _whole_json(item["arguments"]):
            self.unfinished.add(index)
            return b""
        return self._close(index, item)

    def finish(self, *, finish_reason: str | None, usage: dict[str, Any], error: str | None = None) -> bytes:
        """Close the open item, then the response (``completed``, ``incomplete`` or ``failed``)."""
        closing = self.closing(finish_reason=finish_reason, usage=usage, error=error)
        return closing + self.last(self.final)

    def closing(self, *, finish_reason: str | None, usage: dict[str, Any], error: str | None = None) -> bytes:
        """Close the open item, and seal the final response (``self.final``), whose event ``last`` makes: a
        caller that stores it first may say it was not stored."""
        # An answer with neither text nor calls (thinking alone, say) that ended whole ends with an empty message,
        # as in the non-streamed object (``says_nothing``).
        answered = any(item["type"] != "reasoning" for item in self.items[self.closed:])
        out = [self.search_failed()]  # a failure during the search (an answer begins after it)
        if not answered and error is None and says_nothing(finish_reason):
            out.append(self._open_message())
        final = finished(self.base, self.items, finish_reason=finish_reason, usage=usage, error=error)
        out.append(self._close_current())
        out.extend(self._close(index, self.items[index]) for index in sorted(self.unfinished))
        self.unfinished.clear()
        if self.seal is not None:  # after the close, which writes the last message's annotations into it
            final = self.seal(final)
        self.final = final
        return b"".join(out)

    def last(self, final: dict[str, Any]) -> bytes:
        """The stream's last event: the final response, as its status names it."""
        return self.event(f"response.{final['status']}", response=final)

    def ended(self, final: dict[str, Any]) -> bytes:
        """The last events of a stream whose answer never closed its items (its worker shut down, failed, or died
        before it wrote them): each item still open done, as ``final`` has it (the same id) or as far as it came
        (``incomplete`` unless ``final`` completed), then ``final``'s event. Its end alone left items the stream
        opened without their ``.done`` events (what apps act on, a call's arguments whole), as OpenAI's stream never
        does. A stream whose answer closed them (``closing``) gets the last event alone."""
        left = sorted(self._still_open())
        self.current, self.message, self.thinking, self.unfinished, self.search = None, None, None, set(), None
        whole = {item.get("id"): item for item in final.get("output") or () if isinstance(item, dict)}
        status = "completed" if final.get("status") == "completed" else "incomplete"
        out = []
        for index in left:
            item = copy.deepcopy(whole.get(self.items[index]["id"]) or self.items[index] | {"status": status})
            if item["type"] == "web_search_call":
                out.append(self.search_done(item | {"status": "completed" if status == "completed" else "failed"}))
            elif item["type"] in ("message", "reasoning") and not item.get("content"):
                out.append(self.event("response.output_item.done", output_index=index, item=item))  # no part came
            else:
                out.append(self._close(index, item))
        return b"".join(out) + self.last(final)

    def _close(self, index: int, item: dict[str, Any]) -> bytes:
        if item["type"] == "reasoning":
            part = item["content"][0]
            out = (self.event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                              content_index=0, text=part["text"])
                   + self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part))
        elif item["type"] == "message" and item["content"][0]["type"] == "refusal":
            part = item["content"][0]
            out = (self.event("response.refusal.done", item_id=item["id"], output_index=index, content_index=0,
                              refusal=part["refusal"])
                   + self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part))
        elif item["type"] == "message":
            part = item["content"][0]
            out = (self._annotations(index, item)
                   + self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                                text=part["text"], logprobs=event_logprobs(part.get("logprobs") or []))
                   + self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                content_index=0, part=part))
        else:
            out = self.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                             name=item["name"], arguments=item["arguments"])
        return out + self.event("response.output_item.done", output_index=index, item=item)

    def _annotations(self, index: int, item: dict[str, Any]) -> bytes:
        """A message's annotations, found in its whole text (citations can span deltas), as events."""
        part = item["content"][0]
        part["annotations"] = self.annotate(part["text"]) if self.annotate else part.get("annotations") or []
        return b"".join(self.event("response.output_text.annotation.added", item_id=item["id"], output_index=index,
                                   content_index=0, annotation_index=i, annotation=a)
                        for i, a in enumerate(part["annotations"]))


def reopened(frames: Iterable[str]) -> ResponseStream:
    """The renderer as a stream's events (``frames``: SSE, as stored) left it: each item they opened, built from its
    deltas, and open until its ``output_item.done``; the next sequence number after theirs. A stream resumed from
    the store whose worker died before its closing events ends with its items done from it (``ended``)."""
    stream = ResponseStream({})
    for frame in frames:
        data = loads(frame.split("\ndata: ", 1)[1])
        stream.seq = int(data["sequence_number"]) + 1
        _replay(stream, data)
    return stream


def _replay(stream: ResponseStream, data: dict[str, Any]) -> None:
    """One stored event into ``stream``'s items (``reopened``)."""
    kind, index = data.get("type"), data.get("output_index")
    if kind == "response.output_item.added":
        stream.items.append(copy.deepcopy(data["item"]))
        stream.unfinished.add(len(stream.items) - 1)
        return
    if not isinstance(index, int) or not 0 <= index < len(stream.items):
        return
    item = stream.items[index]
    if kind == "response.output_item.done":
        stream.items[index] = data["item"]
        stream.unfinished.discard(index)
    elif kind == "response.content_part.added":
        item.setdefault("content", []).append(dict(data["part"]))
    elif kind == "response.function_call_arguments.delta":
        item["arguments"] = item.get("arguments", "") + data["delta"]
    elif kind in _DELTAS and item.get("content"):
        part = item["content"][min(int(data.get("content_index") or 0), len(item["content"]) - 1)]
        part[_DELTAS[kind]] = part.get(_DELTAS[kind], "") + data["delta"]


# The delta events of a content part, and the part's field each adds to.
_DELTAS = {"response.output_text.delta": "text", "response.reasoning_text.delta": "text",
           "response.refusal.delta": "refusal"}
