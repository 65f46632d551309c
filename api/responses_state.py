"""Stored responses: what ``store``, ``previous_response_id`` and the ``/v1/responses/{id}`` routes read and write.

A response is stored (unless the request says ``store: false``, or the gateway's
``RESPONSES_RETENTION_SECONDS`` is 0) with the conversation it answered, as
Responses input items: the previous response's items, its output, then this
request's input; of them, its part keeps this request's input and names the
previous response (``Keeping.part``), whose part holds the rest. A turn of a
``conversation`` names its last stored turn so (``last_turn``), its part keeping
the items added to the conversation since that turn too. A request
naming it as ``previous_response_id`` is answered with that conversation and the
previous output before its own input, as OpenAI answers one; the previous ``instructions`` are not carried over (at OpenAI
neither). Every lookup is by the calling key: another key's response reads as
an unknown one. The record is written just before the caller gets the final
response object (``keep``): its next turn may come at once, to any worker.

An ``item_reference`` in the input is sent, stored and listed as the item it
names (``resolved``), and each item keeps an id of its own in its conversation
(``unique_ids``). A background response still pending past its deadline reads
as failed (``as_it_is``: the process answering it died).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loguru import logger

from api import conversations_state
from api.auth import store_call
from api.context import ApiContext
from api.conversations_state import KEEP_ATTEMPTS, KEEP_PAUSE_S
from api.last_stored import LastStored, digests, folded, listed_size
from api.responses_render import new_id, reopened
from api.responses_wire import STATELESS, InputItemsQuery, ResponsesRequest, is_item_reference
from shared.aio import retried
from shared.errors import MODEL_NOT_FOUND, ApiError, invalid_value
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.conversations import encode_item
from shared.store.responses import (
    EMPTY,
    PreviousGone,
    StoredResponse,
    encode,
    joined,
    list_size,
    response_text,
    same_items,
    within_bound,
)

T = TypeVar("T")
# The id prefix of a stored input item the caller sent without one, by its type (OpenAI's where it has one).
ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
                 "web_search_call": "ws"}
STORAGE_OFF = f"{STATELESS} (RESPONSES_RETENTION_SECONDS is 0)"
MAX_ITEM_ID = 256  # an item id an item_reference can name (a longer one is kept, not indexed)
MAX_REFERENCED_RESPONSES = 16  # stored responses one request's item references may read
READ_BATCH = 1000  # a response's stored events read from the store at once
# A conversation's last items whose ids are looked up to find its last stored turn (``last_turn``): its output's
# last item, or items added to the conversation after it (a lookup each).
LAST_TURN_LOOKUPS = 4
PENDING = frozenset({"queued", "in_progress"})  # a background response's statuses before it is settled
NOT_KEPT = ("its conversation was over 1 MiB with the answer, and was not stored (the response says store: "
            "false): send the conversation in input instead")
STOPPED = ("its answer was not stored by its deadline (the gateway process answering it stopped, or the store was "
           "unreachable until then): send the request again")


async def response_store_call(pending: Awaitable[T]) -> T:
    """A stored-response store call on a request's path: the store down is the 503 naming it (it named the key
    store, which answered)."""
    return await store_call(pending, "response store")


@dataclass(frozen=True)
class History:
    """The conversation a request continues (``items``), and where it is stored: ``prev``, the stored response
    whose conversation and output begin it (its next part names it: the one named by ``previous_response_id``, or
    a ``conversation``'s last stored turn, ``last_turn``), ``size``, the ``list_size`` of ``items`` (carried by the
    stored parts, not measured again each turn), and ``after``, how many of its last items come after ``prev``'s
    (items added to a conversation between its turns: the next part keeps them itself)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    prev: str | None = None
    size: int = EMPTY
    after: int = 0
    before: int | None = None  # ``list_size`` of ``items`` but the last ``after`` (None: ``size``)
    digest: str | None = None  # a conversation turn's: the ``last_stored`` digest of ``items`` (None: not one)

    @property
    def tail(self) -> list[dict[str, Any]]:
        """Its items after ``prev``'s conversation and output."""
        return self.items[len(self.items) - self.after:]

    @property
    def prev_size(self) -> int:
        """``list_size`` of ``prev``'s conversation and output (its items but ``tail``)."""
        return self.size if self.before is None else self.before

    def alone(self) -> History:
        """The same conversation, stored whole (its ``prev`` is gone)."""
        return History(self.items, size=self.size, digest=self.digest)


async def continued(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest) -> tuple[ResponsesRequest, History]:
    """``wanted`` with its item references resolved (``with_references``), and the conversation it continues
    (``history_of``); a conversation this turn's input would take over its bound is a 400 here, before any
    miner is asked (the answer could not be added to it), and one of a key whose daily storage budget is spent
    the 429 ``storage_limit_exceeded``."""
    history = await history_of(ctx, key, wanted)
    wanted = await with_references(ctx, key, wanted, history.items)
    if wanted.conversation_id is not None:
        await conversations_state.check_room(ctx, key, history.items, input_items(wanted))
    return wanted, history


async def history_of(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest) -> History:
    """The conversation ``wanted`` continues: the previous response's items, then its output, or the items of
    its ``conversation`` ([] with neither). An id this key cannot see is OpenAI's 400, in OpenAI's words."""
    response_id = wanted.previous_response_id
    if wanted.conversation_id is not None:
        if response_id is not None:
            raise ApiError(400, "Mutually exclusive parameters: Ensure you are only providing one of: "
                                "'previous_response_id' or 'conversation'.", param="conversation",
                           code="mutually_exclusive_parameters")
        items, last = await conversations_state.history(ctx, key, wanted.conversation_id)
        if wanted.store is False or ctx.responses is None:
            return History(items, size=list_size(items))
        return await last_turn(ctx, key, items, LastStored.read(last))
    if response_id is None:
        return History()
    if ctx.responses is None:
        raise invalid_value("previous_response_id", STORAGE_OFF)
    found = await _read(ctx, key, response_id)
    if found is None:
        raise previous_not_found(response_id)
    if found.response.get("status") in PENDING:
        raise ApiError(400, f"Previous response with id '{response_id}' is still in progress: poll it until it "
                            "is done.", param="previous_response_id", code="previous_response_in_progress")
    if not_kept(found):
        raise ApiError(400, f"Previous response with id '{response_id}' not found: {NOT_KEPT}.",
                       param="previous_response_id", code="previous_response_not_found")
    if found.missing is not None:
        raise ApiError(400, f"Previous response with id '{response_id}' cannot be continued: {incomplete(found)}.",
                       param="previous_response_id", code="previous_response_not_found")
    output = list(found.response.get("output") or [])
    return History(found.items + output, found.id, joined(found.size, list_size(output)))


async def last_turn(ctx: ApiContext, key: KeyRecord, items: list[dict[str, Any]],
                    last: LastStored | None = None) -> History:
    """A ``conversation``'s ``items`` as the history of a turn to be stored: after the stored response of its last
    stored turn, when they begin with that response's conversation and output exactly (its next part then keeps
    only what comes after: a conversation of N turns takes space linear in N, as a chain does), else whole (a
    first turn, items deleted from the conversation, a turn stored before parts or not stored). That response is
    the one the conversation's record names (``last``), when its digest matches (no store call: ``last_stored``);
    else it is found by the id of one of the last ``LAST_TURN_LOOKUPS`` items (the one a stored response added:
    the items index), and read; a response still pending or kept without its conversation is never continued so
    (a record names neither: a background turn does not name itself)."""
    encoded = [encode_item(item) for item in items]
    named, digest = digests(encoded, -1 if last is None else last.count)
    whole = History(items, size=listed_size(encoded), digest=digest)
    if last is not None and named == last.digest:
        return History(items, last.response_id, whole.size, len(items) - last.count,
                       listed_size(encoded[:last.count]), digest)
    assert ctx.responses is not None
    looked = 0
    for item in reversed(items):
        item_id = item.get("id")
        if looked == LAST_TURN_LOOKUPS:
            break
        if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ITEM_ID:
            continue
        looked += 1
        found = await response_store_call(ctx.responses.holder(key.id, item_id))
        if found is None:
            continue
        output = list(found.response.get("output") or [])
        start = len(found.items) + len(output)
        if (found.until is not None or found.response.get("status") in PENDING or not_kept(found)
                or found.missing is not None
                or not same_items(items[:start], found.items + output)):
            return whole
        return History(items, found.id, whole.size, len(items) - start, joined(found.size, list_size(output)), digest)
    return whole


def previous_not_found(response_id: str) -> ApiError:
    """OpenAI's 400 for a ``previous_response_id`` this key cannot see, in OpenAI's words."""
    return ApiError(400, f"Previous response with id '{response_id}' not found.", param="previous_response_id",
                    code="previous_response_not_found")


def incomplete(found: StoredResponse) -> str:
    """Why a stored response whose chain is broken (``StoredResponse.missing``) is neither continued nor listed,
    naming the response gone: its own object is intact, the conversation before it is not."""
    return (f"its conversation is incomplete: response '{found.missing}', earlier in its chain of "
            "previous_response_id, is no longer in the store (evicted); send the conversation in input instead")


def not_kept(found: StoredResponse) -> bool:
    """Whether a stored response was kept without its conversation: a background one (stored to be polled)
    whose conversation and answer were over the size bound. It says ``store: false``, as a foreground one does
    (which is not stored at all)."""
    return found.response.get("store") is False


async def stored(ctx: ApiContext, key: KeyRecord, response_id: str) -> StoredResponse:
    """The calling key's stored response, or the 404 an unknown id gets (another key's included)."""
    found = None if ctx.responses is None else await _read(ctx, key, response_id)
    if found is None:
        raise _not_found(ctx, response_id)
    return found


def failed(response: dict[str, Any], message: str, code: str = "server_error") -> dict[str, Any]:
    """The response, failed with ``message`` and ``code`` (OpenAI's ``server_error`` unless told: no miner's
    answer was had)."""
    return response | {"status": "failed", "error": {"code": code, "message": message}}


def failure_code(error: ApiError) -> str:
    """The ``error.code`` of a response that failed with ``error`` (an answer's HTTP error, past its request, in a
    stream opened by its web search or in the background), in the SDK's words for what the HTTP status said:
    ``server_error`` for a 5xx, ``rate_limit_exceeded`` for a 429, ``invalid_prompt`` for another 4xx (the miners'
    model servers refused it: too long, a parameter they take not). A background response ended ``server_error``
    for every one, which read as the gateway failing (try again later) where the request was the caller's to fix.
    And ``model_not_found`` for a model no miner serves, as the same request's 404 says it (it too read as the
    gateway failing); not in the Python SDK's ``ResponseError.code`` list, which has no code for it: its clients
    keep any code (``client.responses`` does not validate), only a strict validation refuses it."""
    if error.code == MODEL_NOT_FOUND:
        return MODEL_NOT_FOUND
    return "server_error" if error.status >= 500 else "rate_limit_exceeded" if error.status == 429 else "invalid_prompt"


async def as_it_is(ctx: ApiContext, key: KeyRecord, found: StoredResponse) -> StoredResponse:
    """A stored response as a reader sees it: a background one still pending past its deadline has failed
    (the process running it died), and is settled so (a store that fails then: it reads so anyway)."""
    if found.until is None or found.response.get("status") not in PENDING or time.time() <= found.until:
        return found
    gone = failed(found.response, STOPPED)
    try:
        gone = gone | {"output": await output_so_far(ctx, found)}
        await settle_counted(ctx, key, found.id, found.again(gone), retention=ctx.settings.responses_retention_seconds)
    except StoreUnavailable as e:
        logger.warning("background response {} not settled as failed: {}", found.id, e)
    return dataclasses.replace(found, response=gone, until=None)


async def output_so_far(ctx: ApiContext, found: StoredResponse) -> list[dict[str, Any]]:
    """The output of a pending response failed now (its worker died): the items its stored events showed, as far as
    they came (``ResponseStream.so_far``: one left open ``incomplete``, a search still running ``failed``), as its
    stream's last event has them; its own output (none) for a response not streamed. Polled, it said ``output: []``
    where the same response streamed again listed them."""
    stored: list[str] = []
    async for frames in stored_events(ctx, found, -1):
        stored.extend(frame for _, frame in frames)
    return reopened(stored).so_far() if stored else list(found.response.get("output") or [])


async def stored_events(ctx: ApiContext, found: StoredResponse, after: int) -> AsyncIterator[list[tuple[int, str]]]:
    """Every event the store keeps of a response past ``after`` now, ``READ_BATCH`` at a time."""
    assert ctx.responses is not None
    while True:
        frames = await ctx.responses.events(found.key_id, found.id, after=after, limit=READ_BATCH)
        if frames:
            yield frames
        if len(frames) < READ_BATCH:
            return
        after = frames[-1][0]


async def settle_counted(ctx: ApiContext, key: KeyRecord, response_id: str, data: str, *, retention: float,
                         item_ids: Sequence[str] = ()) -> bool:
    """Settle a pending background response with ``data`` (once: False when something settled it first), counted
    against its key's daily storage budget once stored, whoever writes it: its worker with the answer, a cancel, or
    a reader failing it past its deadline. Each writes it on the key's behalf, for a response let in with its
    pending record: counted, never refused (a count the store fails is a WARNING)."""
    assert ctx.responses is not None
    settled = await ctx.responses.settle(key.id, response_id, data, retention=retention, item_ids=item_ids)
    if settled and ctx.storage_budget is not None:
        await ctx.storage_budget.count_or_warn(key, len(data.encode()), f"response {response_id}'s settled record "
                                               "not counted")
    return settled


async def forget(ctx: ApiContext, key: KeyRecord, response_id: str) -> None:
    """Delete the calling key's stored response (404 as ``stored`` when there is none)."""
    if ctx.responses is not None and await response_store_call(ctx.responses.delete(key.id, response_id)):
        return
    raise _not_found(ctx, response_id)


async def with_references(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest,
                          known: list[dict[str, Any]]) -> ResponsesRequest:
    """``wanted`` with each ``item_reference`` in its input replaced by the item it names (``resolved``)."""
    if isinstance(wanted.input, str) or not any(is_item_reference(raw) for raw in wanted.input):
        return wanted
    return wanted.model_copy(update={"input": await resolved(ctx, key, wanted.input, "input", known)})


async def resolved(ctx: ApiContext, key: KeyRecord, items: list[dict[str, Any]], at: str,
                   known: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """``items`` with each ``item_reference`` replaced by the item it names: one of ``known`` (the conversation
    being continued), else one the calling key's stored responses added (their input or output). An id not
    found is OpenAI's 404 naming ``input``, in OpenAI's words; at most ``MAX_REFERENCED_RESPONSES`` stored
    responses are read for one request (each up to a megabyte)."""
    by_id = {item["id"]: item for item in known if isinstance(item.get("id"), str)}
    read = 0
    out = []
    for i, raw in enumerate(items):
        if not is_item_reference(raw):
            out.append(raw)
            continue
        item_id = raw.get("id")
        if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ITEM_ID:
            raise invalid_value(f"{at}.{i}.id", f"an item_reference needs the id (a string of 1 to {MAX_ITEM_ID} "
                                                "characters) of a stored item")
        if item_id not in by_id:
            if read == MAX_REFERENCED_RESPONSES:
                raise invalid_value(at, f"item references may name items of at most {MAX_REFERENCED_RESPONSES} "
                                        "stored responses in one request")
            read += 1
            holder = None if ctx.responses is None else await response_store_call(ctx.responses.holder(key.id, item_id))
            if holder is not None:  # every item it holds: the next reference to one costs no read
                by_id.update((item["id"], item) for item in holder.items + list(holder.response.get("output") or [])
                             if isinstance(item.get("id"), str))
        if item_id not in by_id:
            raise ApiError(404, f"Item with id '{item_id}' not found. Items are not persisted when `store` is set "
                                "to false, and a stored response's items expire and are deleted with it.",
                           param=at, type_="invalid_request_error")  # OpenAI's type for it, as Codex reads it
        out.append(by_id[item_id])
    return out


def _not_found(ctx: ApiContext, response_id: str) -> ApiError:
    why = STORAGE_OFF if ctx.responses is None else "it does not exist, has expired or was deleted"
    return ApiError(404, f"No response with id '{response_id[:64]}' found: {why}.", code="response_not_found",
                    param="response_id")


async def _read(ctx: ApiContext, key: KeyRecord, response_id: str) -> StoredResponse | None:
    assert ctx.responses is not None
    found = await response_store_call(ctx.responses.get(key.id, response_id))
    return None if found is None else await as_it_is(ctx, key, found)


def stored_item(raw: dict[str, Any]) -> dict[str, Any]:
    """An input item as it is stored and listed: with an id, a type and a status, a message's text as a
    content part, an image part with its ``detail`` (the SDK's ``ResponseItem`` types require them). The
    translator read the same item."""
    item = dict(raw)
    kind = item.setdefault("type", "message")  # no type and no role was an item_reference: resolved before
    if kind == "message" and isinstance(item.get("content"), str):
        assistant = item.get("role") == "assistant"
        part = {"type": "output_text", "text": item["content"], "annotations": []} if assistant else {
            "type": "input_text", "text": item["content"]}
        item["content"] = [part]
    elif kind == "message" and isinstance(item.get("content"), list):
        item["content"] = [_stored_part(part) for part in item["content"]]
    if not item.get("id"):
        item["id"] = new_id(ITEM_PREFIXES.get(kind, "item"))
    if kind != "reasoning" and not item.get("status"):
        item["status"] = "completed"
    return item


def _stored_part(part: Any) -> Any:
    """A content part as listed: an image without a ``detail`` has OpenAI's default, ``auto``; an answer's text
    without ``annotations`` (a hand-written history's) has none, ``[]`` (the SDK's ``ResponseOutputText`` requires
    the list: without it the part it parses has no ``annotations`` at all)."""
    if not isinstance(part, dict):
        return part
    if part.get("type") == "input_image" and not part.get("detail"):
        return part | {"detail": "auto"}
    if part.get("type") == "output_text" and part.get("annotations") is None:
        return part | {"annotations": []}
    return part


def input_items(wanted: ResponsesRequest, before: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """This request's ``input`` as stored input items, after the conversation ``before`` (``unique_ids``)."""
    if isinstance(wanted.input, str):
        return [stored_item({"type": "message", "role": "user", "content": wanted.input})]
    return unique_ids([stored_item(raw) for raw in wanted.input], before)


def unique_ids(items: list[dict[str, Any]], before: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Stored items, each with an id of its own in its conversation: one whose id an item ``before`` them (or
    an earlier one of them) has, an item sent again or a reference to one already there, is given a new id,
    so that reading, paging (``after``) and deleting by id name one item."""
    taken = {item.get("id") for item in before}
    out = []
    for item in items:
        if item["id"] in taken:
            item = item | {"id": new_id(ITEM_PREFIXES.get(item["type"], "item"))}
        taken.add(item["id"])
        out.append(item)
    return out


@dataclass
class Keeping:
    """A response to be stored (``store``) and/or added to a conversation: the conversation it answers
    (``history``), this request's input items (``added``: the same ids in both), then (``seal``) its final
    object. Stored, it is a part: its object, ``history.tail`` and ``added``, after its ``history.prev``'s part (a
    first turn, or one of a conversation with no such previous part: with its whole history)."""

    key: KeyRecord  # as read for its request: its id, and its own daily storage budget
    retention: float
    history: History
    added: list[dict[str, Any]] = field(default_factory=list)
    store: bool = True  # False: only the conversation gets it (``store: false`` with ``conversation``)
    conversation_id: str | None = None
    data: str | None = None  # the stored form, once sealed and within the size bound
    final: dict[str, Any] | None = None

    @property
    def key_id(self) -> str:
        return self.key.id

    def seal(self, final: dict[str, Any]) -> dict[str, Any]:
        """Called with the final response before it is sent: one over ``MAX_STORED_BYTES`` is not stored,
        and says ``store: false``."""
        self.final = final
        if not self.store:
            return final
        data = self.part(final)
        if data is None:
            return final | {"store": False}
        self.data = data
        return final

    def part(self, response: dict[str, Any], *, until: float | None = None) -> str | None:
        """Its stored form with ``response``; None when its object and its whole conversation are over
        ``MAX_STORED_BYTES`` (it is not stored, as before parts: the bound is the same)."""
        size = joined(self.history.size, list_size(self.added))
        text = response_text(response)  # encoded once: measured, then written
        if not within_bound(text, size, until):
            return None
        if self.history.prev is None:
            return self.whole(text, until=until)
        return encode(text, self.history.tail + self.added, until=until, prev=self.history.prev,
                      before=self.history.prev_size)

    def whole(self, response: dict[str, Any] | str, *, until: float | None = None) -> str:
        """Its stored form holding its whole conversation, after no other part (its previous response gone)."""
        return encode(response, self.history.items + self.added, until=until)

    def unkept(self, response: dict[str, Any]) -> str:
        """The stored form of a background response over the bound: its object alone, to be polled, not
        continued (its part keeps its place after its ``prev``, which it was counted as continuing; a first turn's,
        or one of a conversation stored whole, names none: ``encode`` leaves ``before`` out then)."""
        return encode(response, [], prev=self.history.prev, before=self.history.prev_size)

    def named(self, final: dict[str, Any]) -> str | None:
        """What its conversation's record names as its last stored turn once this one is added (``last_stored``),
        when it is to be stored (None: not a conversation's turn, or not stored: the name it had stays)."""
        if self.data is None or self.history.digest is None:
            return None
        turn = self.added + list(final.get("output") or [])
        return LastStored(final["id"], len(self.history.items) + len(turn),
                          folded(self.history.digest, (encode_item(item) for item in turn))).text()

    def alone(self) -> None:
        """Store it whole from now on: the response its part was to continue (a conversation's last stored turn)
        was deleted or expired as this one was made."""
        self.history = self.history.alone()


def keeping(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest, history: History) -> Keeping | None:
    """How this response will be stored; None: neither stored (``store: false``, or storage off) nor added to
    a conversation (none named)."""
    store = wanted.store is not False and ctx.responses is not None
    if not store and wanted.conversation_id is None:
        return None
    added = input_items(wanted, history.items)
    return Keeping(key, ctx.settings.responses_retention_seconds, history, added, store, wanted.conversation_id)


async def keep(ctx: ApiContext, keeping: Keeping | None) -> bool:
    """Write a sealed response (just before its end goes out), asked again twice ``KEEP_PAUSE_S`` apart when the
    store fails (a write of the same record: safe to repeat). False: it was to be stored and is not, so the
    answer must say ``store: false`` (its next ``previous_response_id`` is a 400): a WARNING, unless the store
    refused it because its key was deleted as it was answered (no key could ever read it), or when the key's daily
    storage budget cannot take it (``within_budget``). Its conversation,
    if any, gets this turn's input and output items first (``extend_conversation``): a store that cannot take
    them is the 503 ``conversations_state.not_added`` raises, and the response is not stored either (the turn
    is sent again whole)."""
    if keeping is None or keeping.final is None:
        return True
    await extend_conversation(ctx, keeping, keeping.final)
    if keeping.data is None or ctx.responses is None:
        return True
    response_id, responses, data = keeping.final["id"], ctx.responses, keeping.data

    async def put(data: str) -> bool:
        return await retried(lambda: responses.put(keeping.key_id, response_id, data, retention=keeping.retention,
                                                   item_ids=item_ids(keeping.added, keeping.final or {})),
                             attempts=KEEP_ATTEMPTS, pause=KEEP_PAUSE_S, on=StoreUnavailable)

    try:
        async with within_budget(ctx, keeping.key, response_id, len(data.encode())) as allowed:
            if not allowed:
                return False
            try:
                kept = await put(data)
            except PreviousGone:  # deleted (or expired) as this answer was made: this one keeps the conversation whole
                whole = keeping.whole(keeping.final)
                kept = await put(whole)
                if kept and ctx.storage_budget is not None:  # counted as what is stored
                    more = len(whole.encode()) - len(data.encode())
                    await ctx.storage_budget.count_or_warn(keeping.key, more, f"{more} bytes of response "
                                                           f"{response_id} stored whole not counted")
    except StoreUnavailable as e:
        ctx.responses_outage.failed(f"response {response_id} not stored (its answer says store: false): {e}")
        return False
    ctx.responses_outage.ok()
    if not kept:  # its key was deleted as it was answered: no one could ever read it
        logger.debug("response {} not stored: its key id={} was deleted", response_id, keeping.key_id)
    return kept


@asynccontextmanager
async def within_budget(ctx: ApiContext, key: KeyRecord, response_id: str, size: int) -> AsyncIterator[bool]:
    """Whether the key's daily storage budget takes a response of ``size`` bytes (counted when it does, and given
    back when the block's write fails: ``StorageBudget.taking``); one it does not is answered ``store: false``, as
    one over ``MAX_STORED_BYTES`` (a WARNING per key per day)."""
    budget = ctx.storage_budget
    if budget is None:
        yield True
        return
    async with budget.taking(key, size) as taken:
        if not taken.allowed:
            budget.warn_once(key, response_id, taken.used)
        yield taken.allowed


def as_kept(final: dict[str, Any], kept: bool) -> dict[str, Any]:
    """The final response as the caller gets it: ``store: false`` when the store did not take it."""
    return final if kept else final | {"store": False}


def turn_failed(final: dict[str, Any], error: ApiError) -> dict[str, Any]:
    """The final response of a turn its conversation could not take (``conversations_state.not_added``): failed
    with that error's words, and not stored as completed (a stream's ``response.failed``). Its code is
    ``server_error``, the SDK's for it: the HTTP error's ``store_unavailable`` is not among the SDK's
    ``ResponseError`` codes, so the SDK's own ``Response`` type refused the response (the 503 keeps it: the SDK's
    HTTP errors take any code)."""
    return failed(as_kept(final, False), error.message) | {"completed_at": None}


async def extend_conversation(ctx: ApiContext, keeping: Keeping, final: dict[str, Any]) -> None:
    """The response's conversation, if it names one, gets this turn's input and output items (or the 503 saying
    it could not)."""
    if keeping.conversation_id is not None:
        await conversations_state.extend(ctx, keeping.key, keeping.conversation_id, keeping.added, final,
                                         keeping.named(final))


def item_ids(added: list[dict[str, Any]], final: dict[str, Any]) -> list[str]:
    """The ids an ``item_reference`` may name of a response: its new input items' and its output's."""
    ids = (item.get("id") for item in added + list(final.get("output") or []))
    return [i for i in ids if isinstance(i, str) and 0 < len(i) <= MAX_ITEM_ID]


def page(items: list[dict[str, Any]], query: InputItemsQuery, where: str = "this response") -> dict[str, Any]:
    """One page of a response's input items (or a conversation's items), as OpenAI's list object (``after``:
    an item id of the order asked)."""
    ordered = items if query.order == "asc" else items[::-1]
    start = 0
    if query.after is not None:
        ids = [item.get("id") for item in ordered]
        if query.after not in ids:
            raise invalid_value("after", f"no item '{query.after[:64]}' in {where}")
        start = ids.index(query.after) + 1
    data = ordered[start:start + query.limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": start + query.limit < len(ordered)}
