"""Stored responses: what ``store``, ``previous_response_id`` and the ``/v1/responses/{id}`` routes read and write.

A response is stored (unless the request says ``store: false``, or the gateway's
``RESPONSES_RETENTION_SECONDS`` is 0) with the conversation it answered, as
Responses input items: the previous response's items, its output, then this
request's input. A request naming it as ``previous_response_id`` is answered
with that conversation and the previous output before its own input, as OpenAI
answers one; the previous ``instructions`` are not carried over (at OpenAI
neither). Every lookup is by the calling key: another key's response reads as
an unknown one. The record is written just before the caller gets the final
response object (``keep``): its next turn may come at once, to any worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from api import conversations_state
from api.auth import store_call
from api.context import ApiContext
from api.responses_render import new_id
from api.responses_wire import STATELESS, InputItemsQuery, ResponsesRequest
from shared.errors import ApiError, invalid_value
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.responses import StoredResponse, encode, fits

# The id prefix of a stored input item the caller sent without one, by its type (OpenAI's where it has one).
ITEM_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs",
                 "web_search_call": "ws"}
STORAGE_OFF = f"{STATELESS} (RESPONSES_RETENTION_SECONDS is 0)"


async def history_of(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation ``wanted`` continues: the previous response's items, then its output, or the items of
    its ``conversation`` ([] with neither). An id this key cannot see is OpenAI's 400, in OpenAI's words."""
    response_id = wanted.previous_response_id
    if wanted.conversation_id is not None:
        if response_id is not None:
            raise ApiError(400, "Mutually exclusive parameters: Ensure you are only providing one of: "
                                "'previous_response_id' or 'conversation'.", param="conversation",
                           code="mutually_exclusive_parameters")
        return await conversations_state.history(ctx, key, wanted.conversation_id, input_items(wanted))
    if response_id is None:
        return []
    if ctx.responses is None:
        raise invalid_value("previous_response_id", STORAGE_OFF)
    found = await _read(ctx, key, response_id)
    if found is None:
        raise ApiError(400, f"Previous response with id '{response_id}' not found.", param="previous_response_id",
                       code="previous_response_not_found")
    return found.items + list(found.response.get("output") or [])


async def stored(ctx: ApiContext, key: KeyRecord, response_id: str) -> StoredResponse:
    """The calling key's stored response, or the 404 an unknown id gets (another key's included)."""
    found = None if ctx.responses is None else await _read(ctx, key, response_id)
    if found is None:
        raise _not_found(ctx, response_id)
    return found


async def forget(ctx: ApiContext, key: KeyRecord, response_id: str) -> None:
    """Delete the calling key's stored response (404 as ``stored`` when there is none)."""
    if ctx.responses is not None and await store_call(ctx.responses.delete(key.id, response_id)):
        return
    raise _not_found(ctx, response_id)


def _not_found(ctx: ApiContext, response_id: str) -> ApiError:
    why = STORAGE_OFF if ctx.responses is None else "it does not exist, has expired or was deleted"
    return ApiError(404, f"No response with id '{response_id[:64]}' found: {why}.", code="response_not_found",
                    param="response_id")


async def _read(ctx: ApiContext, key: KeyRecord, response_id: str) -> StoredResponse | None:
    assert ctx.responses is not None
    return await store_call(ctx.responses.get(key.id, response_id))


def stored_item(raw: dict[str, Any]) -> dict[str, Any]:
    """An input item as it is stored and listed: with an id, a type and a status, a message's text as a
    content part (the SDK's ``ResponseItem`` types require them). The translator read the same item."""
    item = dict(raw)
    kind = item.setdefault("type", "message")  # no type and no role was an item_reference: refused before
    if kind == "message" and isinstance(item.get("content"), str):
        assistant = item.get("role") == "assistant"
        part = {"type": "output_text", "text": item["content"], "annotations": []} if assistant else {
            "type": "input_text", "text": item["content"]}
        item["content"] = [part]
    if not item.get("id"):
        item["id"] = new_id(ITEM_PREFIXES.get(kind, "item"))
    if kind != "reasoning" and not item.get("status"):
        item["status"] = "completed"
    return item


def input_items(wanted: ResponsesRequest) -> list[dict[str, Any]]:
    """This request's ``input`` as stored input items."""
    if isinstance(wanted.input, str):
        return [stored_item({"type": "message", "role": "user", "content": wanted.input})]
    return [stored_item(raw) for raw in wanted.input]


@dataclass
class Keeping:
    """A response to be stored (``store``) and/or added to a conversation: the conversation it answers, this
    request's input items (``added``: the same ids in both), then (``seal``) its final object."""

    key_id: str
    retention: float
    items: list[dict[str, Any]]
    added: list[dict[str, Any]] = field(default_factory=list)
    store: bool = True  # False: only the conversation gets it (``store: false`` with ``conversation``)
    conversation_id: str | None = None
    data: str | None = None  # the stored form, once sealed and within the size bound
    final: dict[str, Any] | None = None

    def seal(self, final: dict[str, Any]) -> dict[str, Any]:
        """Called with the final response before it is sent: one over ``MAX_STORED_BYTES`` is not stored,
        and says ``store: false``."""
        self.final = final
        if not self.store:
            return final
        data = encode(final, self.items)
        if not fits(data):
            return final | {"store": False}
        self.data = data
        return final


def keeping(ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest,
            history: list[dict[str, Any]]) -> Keeping | None:
    """How this response will be stored; None: neither stored (``store: false``, or storage off) nor added to
    a conversation (none named)."""
    store = wanted.store is not False and ctx.responses is not None
    if not store and wanted.conversation_id is None:
        return None
    added = input_items(wanted)
    return Keeping(key.id, ctx.settings.responses_retention_seconds, history + added, added, store,
                   wanted.conversation_id)


async def keep(ctx: ApiContext, keeping: Keeping | None) -> None:
    """Write a sealed response (just before its end goes out). A store that fails here costs the caller its
    next ``previous_response_id`` (a 400 then), not this answer: a WARNING. Its conversation, if any, gets
    this turn's input and output items (``conversations_state.extend``)."""
    if keeping is not None and keeping.conversation_id is not None and keeping.final is not None:
        await conversations_state.extend(ctx, keeping.key_id, keeping.conversation_id, keeping.added, keeping.final)
    if keeping is None or keeping.data is None or keeping.final is None or ctx.responses is None:
        return
    response_id = keeping.final["id"]
    try:
        await ctx.responses.put(keeping.key_id, response_id, keeping.data, retention=keeping.retention)
    except StoreUnavailable as e:
        logger.warning("response {} not stored: {}", response_id, e)


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
